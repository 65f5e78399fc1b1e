//! One behavioural suite for every [`MemoryStore`] backend: the same test functions run
//! against the in-memory store, the SQLite store and the Redis store (on a `redis-server`
//! each test starts), driving the trait directly (a
//! `Reply::Pending` is resolved on a current-thread tokio runtime).
//!
//! Values are compared strictly: same type and same lossless encoding
//! (`concerto_memory::encode_value`), so `Int(2)` is not `Float(2.0)` and map order counts.
//!
//! # Adding a backend (e.g. Redis)
//!
//! Write a factory `fn open_redis(names: Vec<String>) -> Fixture` that returns a fresh,
//! empty store for hashmaps `names` (for Redis: a unique key prefix on the test server, the
//! server handle kept in `Fixture::_guard`), then add one line per suite below:
//!
//! ```text
//! store_suite!(redis, open_redis);
//! durable_suite!(redis_durable, open_redis);   // state outlives the store: set `reopen`
//! ```

use concerto_runtime::vm::host::MapId;
use std::any::Any;
use std::sync::Arc;

use concerto_memory::{InMemoryStore, encode_value};
use concerto_store_sqlite::SqliteStore;
use concerto_vm::host::{ChatMessage, LedgerEntry, LedgerQuery, MemoryStore, Reply, ToolCall};
use concerto_vm::{EnumObj, Str, StructObj, StructType, Value};

// ---- fixtures ----------------------------------------------------------------------------

/// A fresh store under test.
pub(crate) struct Fixture {
    /// The store.
    pub(crate) store: Arc<dyn MemoryStore>,
    /// Opens the same state again in a new store (durable and shared backends).
    pub(crate) reopen: Option<Box<dyn Fn() -> Arc<dyn MemoryStore>>>,
    /// Whatever must outlive the store (a temporary directory, a server): held for its
    /// `Drop`, never read.
    pub(crate) _guard: Box<dyn Any>,
}

impl Fixture {
    /// Closes the store (this must be the only reference) and opens the state again.
    fn restart(&mut self) {
        let Some(reopen) = &self.reopen else {
            panic!("this backend cannot reopen its state");
        };
        assert_eq!(
            Arc::strong_count(&self.store),
            1,
            "the store is still referenced elsewhere"
        );
        let old = std::mem::replace(&mut self.store, Arc::new(InMemoryStore::new(0)));
        drop(old);
        self.store = reopen();
    }
}

/// Makes a fresh, empty store for the given hashmap names.
type Open = fn(Vec<String>) -> Fixture;

fn open_memory(names: Vec<String>) -> Fixture {
    Fixture {
        store: Arc::new(InMemoryStore::with_names(names)),
        reopen: None,
        _guard: Box::new(()),
    }
}

fn open_sqlite(names: Vec<String>) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path, names.clone()).expect("open the SQLite store");
    Fixture {
        store: Arc::new(store),
        reopen: Some(Box::new(move || {
            Arc::new(SqliteStore::open(&path, names.clone()).expect("reopen the SQLite store"))
        })),
        _guard: Box::new(dir),
    }
}

#[path = "../crates/concerto-store-redis/tests/common/server.rs"]
pub(crate) mod redis_server;

/// A fresh Redis store on its own `redis-server` (started by the test; the test fails with a
/// message saying how to install it when it cannot be started).
fn open_redis(names: Vec<String>) -> Fixture {
    let server = redis_server::RedisServer::start();
    let url = server.url();
    let store = concerto_store_redis::RedisStore::connect(&url, "suite", names.clone())
        .expect("connect to the test redis-server");
    Fixture {
        store: Arc::new(store),
        reopen: Some(Box::new(move || {
            Arc::new(
                concerto_store_redis::RedisStore::connect(&url, "suite", names.clone())
                    .expect("reconnect to the test redis-server"),
            )
        })),
        _guard: Box::new(server),
    }
}

/// The test functions of [`store_suite!`], for one backend.
macro_rules! store_suite {
    ($backend:ident, $open:path) => {
        mod $backend {
            use super::*;
            #[test]
            fn hashmap_set_get_has_delete_len() {
                super::hashmap_set_get_has_delete_len($open)
            }
            #[test]
            fn hashmap_entries_keep_insertion_order() {
                super::hashmap_entries_keep_insertion_order($open)
            }
            #[test]
            fn hashmap_clear_empties_only_that_hashmap() {
                super::hashmap_clear_empties_only_that_hashmap($open)
            }
            #[test]
            fn hashmap_unknown_index_is_an_error() {
                super::hashmap_unknown_index_is_an_error($open)
            }
            #[test]
            fn hashmap_set_many_and_get_many() {
                super::hashmap_set_many_and_get_many($open)
            }
            #[test]
            fn hashmap_replace_and_remove_return_the_old_value() {
                super::hashmap_replace_and_remove_return_the_old_value($open)
            }
            #[test]
            fn ledger_insert_upserts_and_updates() {
                super::ledger_insert_upserts_and_updates($open)
            }
            #[test]
            fn ledger_queries() {
                super::ledger_queries($open)
            }
            #[test]
            fn ledgers_are_scoped_by_name() {
                super::ledgers_are_scoped_by_name($open)
            }
            #[test]
            fn memory_append_window_messages_clear() {
                super::memory_append_window_messages_clear($open)
            }
            #[test]
            fn values_of_every_kind_round_trip() {
                super::values_of_every_kind_round_trip($open)
            }
            #[test]
            fn unusual_keys_and_identifiers() {
                super::unusual_keys_and_identifiers($open)
            }
        }
    };
}

/// The tests of backends whose state outlives the store.
macro_rules! durable_suite {
    ($backend:ident, $open:path) => {
        mod $backend {
            use super::*;
            #[test]
            fn state_survives_a_restart() {
                super::state_survives_a_restart($open)
            }
            #[test]
            fn run_journals_keep_order_and_survive_a_restart() {
                super::run_journals_keep_order_and_survive_a_restart($open)
            }
        }
    };
}

store_suite!(memory, open_memory);
store_suite!(sqlite, open_sqlite);
store_suite!(redis, open_redis);

durable_suite!(sqlite_durable, open_sqlite);
durable_suite!(redis_durable, open_redis);

// ---- helpers -----------------------------------------------------------------------------

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
}

/// The result of a reply, waiting when it comes later.
fn wait<T>(reply: Reply<T>) -> T {
    match reply {
        Reply::Ready(v) => v,
        Reply::Pending(fut) => RT.with(|rt| rt.block_on(fut)),
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn s(text: &str) -> Str {
    Str::from(text)
}

/// A value's type and exact encoding.
fn exact(v: &Value) -> String {
    let json = encode_value(v).expect("encodable");
    format!(
        "{}: {}",
        v.type_name(),
        serde_json::to_string(&json).expect("json")
    )
}

#[track_caller]
fn assert_same(actual: &Value, expected: &Value) {
    assert_eq!(exact(actual), exact(expected));
}

#[track_caller]
fn assert_same_opt(actual: &Option<Value>, expected: Option<&Value>) {
    assert_eq!(actual.as_ref().map(exact), expected.map(exact));
}

fn set(st: &dyn MemoryStore, map: u32, key: &str, value: Value) {
    wait(st.hashmap_set(MapId(map), s(key), value)).expect("set");
}

fn get(st: &dyn MemoryStore, map: u32, key: &str) -> Option<Value> {
    wait(st.hashmap_get(MapId(map), key)).expect("get")
}

/// The keys of a hashmap in order, and `key=value` texts.
fn listing(st: &dyn MemoryStore, map: u32) -> Vec<String> {
    wait(st.hashmap_entries(MapId(map)))
        .expect("entries")
        .iter()
        .map(|(k, v)| format!("{}={}", k.as_str(), exact(v)))
        .collect()
}

fn ints(pairs: &[(&str, i64)]) -> Vec<String> {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", exact(&Value::Int(*v))))
        .collect()
}

fn entry(identifier: &str, keys: &[&str], value: Value) -> LedgerEntry {
    LedgerEntry {
        identifier: identifier.to_string(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        value,
    }
}

fn ids(entries: &[LedgerEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.identifier.as_str()).collect()
}

fn query(st: &dyn MemoryStore, ledger: &str, q: LedgerQuery) -> Vec<String> {
    wait(st.ledger_query(ledger, q))
        .expect("query")
        .into_iter()
        .map(|e| e.identifier)
        .collect()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|k| k.to_string()).collect()
}

/// Values of every kind the stores keep.
fn sample_values() -> Vec<(&'static str, Value)> {
    let point = StructType::new("Point", vec![Arc::from("x"), Arc::from("y")]);
    let enum_value = |variant: &str, id: u32, names: Option<Vec<&str>>, payload: Vec<Value>| {
        Value::Enum(Arc::new(EnumObj {
            type_name: Arc::from("Shape"),
            variant: Arc::from(variant),
            type_id: 3,
            variant_id: id,
            field_names: names.map(|n| n.into_iter().map(Arc::from).collect()),
            payload,
        }))
    };
    vec![
        ("int", Value::Int(42)),
        ("int-min", Value::Int(i64::MIN)),
        ("int-max", Value::Int(i64::MAX)),
        ("float", Value::Float(0.1 + 0.2)),
        ("float-whole", Value::Float(2.0)),
        ("float-neg-zero", Value::Float(-0.0)),
        ("float-nan", Value::Float(f64::NAN)),
        ("float-inf", Value::Float(f64::INFINITY)),
        ("float-big", Value::Float(1e300)),
        ("string", Value::str("héllo \"wörld\"\n\t✓ 🎼")),
        ("string-empty", Value::str("")),
        ("string-null-char", Value::str("a\0b")),
        ("true", Value::Bool(true)),
        ("false", Value::Bool(false)),
        ("nil", Value::Nil),
        ("array-empty", Value::array(vec![])),
        (
            "array",
            Value::array(vec![
                Value::Int(1),
                Value::Float(1.0),
                Value::array(vec![Value::str("x"), Value::Nil]),
            ]),
        ),
        ("map-empty", Value::map(Vec::<(&str, Value)>::new())),
        (
            "map",
            Value::map([
                ("z", Value::Int(1)),
                ("a", Value::map([("inner", Value::Bool(true))])),
                ("m", Value::array(vec![Value::Int(2)])),
            ]),
        ),
        (
            "map-dollar",
            Value::map([("$some", Value::Int(1)), ("b", Value::None)]),
        ),
        (
            "struct",
            Value::Struct(StructObj::new(
                point,
                vec![Value::Int(1), Value::Float(2.5)],
            )),
        ),
        ("enum-unit", enum_value("Empty", 0, None, vec![])),
        (
            "enum-tuple",
            enum_value(
                "Circle",
                1,
                None,
                vec![Value::Float(1.5), Value::str("red")],
            ),
        ),
        (
            "enum-struct",
            enum_value(
                "Rect",
                2,
                Some(vec!["w", "h"]),
                vec![Value::Int(3), Value::Int(4)],
            ),
        ),
        ("ok", Value::ok(Value::Int(1))),
        ("err", Value::err(Value::str("boom"))),
        ("some", Value::some(Value::array(vec![Value::Int(1)]))),
        ("some-nil", Value::some(Value::Nil)),
        ("none", Value::None),
        (
            "nested",
            Value::ok(Value::some(Value::map([(
                "list",
                Value::array(vec![
                    Value::err(Value::None),
                    Value::Float(f64::NEG_INFINITY),
                ]),
            )]))),
        ),
    ]
}

// ---- hashmaps ----------------------------------------------------------------------------

fn hashmap_set_get_has_delete_len(open: Open) {
    let fx = open(names(&["store"]));
    let st = &*fx.store;
    assert_eq!(wait(st.hashmap_len(MapId(0))).unwrap(), 0);
    assert_same_opt(&get(st, 0, "a"), None);
    set(st, 0, "a", Value::Int(1));
    set(st, 0, "b", Value::str("two"));
    assert_same_opt(&get(st, 0, "a"), Some(&Value::Int(1)));
    assert_same_opt(&get(st, 0, "b"), Some(&Value::str("two")));
    assert!(wait(st.hashmap_has(MapId(0), "a")).unwrap());
    assert!(!wait(st.hashmap_has(MapId(0), "c")).unwrap());
    assert!(
        !wait(st.hashmap_has(MapId(0), "A")).unwrap(),
        "keys are case-sensitive"
    );
    assert_eq!(wait(st.hashmap_len(MapId(0))).unwrap(), 2);
    set(st, 0, "a", Value::Float(1.0));
    assert_same_opt(&get(st, 0, "a"), Some(&Value::Float(1.0)));
    assert_eq!(wait(st.hashmap_len(MapId(0))).unwrap(), 2);
    assert!(wait(st.hashmap_delete(MapId(0), "a")).unwrap());
    assert!(!wait(st.hashmap_delete(MapId(0), "a")).unwrap());
    assert!(!wait(st.hashmap_has(MapId(0), "a")).unwrap());
    assert_same_opt(&get(st, 0, "a"), None);
    assert_eq!(wait(st.hashmap_len(MapId(0))).unwrap(), 1);
    // Nil is a value like any other: stored, present, counted.
    set(st, 0, "nil", Value::Nil);
    assert!(wait(st.hashmap_has(MapId(0), "nil")).unwrap());
    assert_same_opt(&get(st, 0, "nil"), Some(&Value::Nil));
    assert_eq!(wait(st.hashmap_len(MapId(0))).unwrap(), 2);
}

fn hashmap_entries_keep_insertion_order(open: Open) {
    let fx = open(names(&["store"]));
    let st = &*fx.store;
    assert!(wait(st.hashmap_entries(MapId(0))).unwrap().is_empty());
    for (k, v) in [("c", 1), ("a", 2), ("b", 3)] {
        set(st, 0, k, Value::Int(v));
    }
    assert_eq!(listing(st, 0), ints(&[("c", 1), ("a", 2), ("b", 3)]));
    // An update keeps the key's position.
    set(st, 0, "c", Value::Int(10));
    assert_eq!(listing(st, 0), ints(&[("c", 10), ("a", 2), ("b", 3)]));
    // A deleted and re-inserted key goes last.
    wait(st.hashmap_delete(MapId(0), "c")).unwrap();
    set(st, 0, "c", Value::Int(11));
    assert_eq!(listing(st, 0), ints(&[("a", 2), ("b", 3), ("c", 11)]));
    // Removing the last key and adding a new one.
    wait(st.hashmap_remove(MapId(0), "c")).unwrap();
    set(st, 0, "d", Value::Int(4));
    set(st, 0, "c", Value::Int(12));
    assert_eq!(
        listing(st, 0),
        ints(&[("a", 2), ("b", 3), ("d", 4), ("c", 12)])
    );
    // set_many: existing keys stay, new ones go last in batch order.
    wait(st.hashmap_set_many(
        MapId(0),
        vec![
            (s("z"), Value::Int(26)),
            (s("a"), Value::Int(20)),
            (s("y"), Value::Int(25)),
        ],
    ))
    .unwrap();
    assert_eq!(
        listing(st, 0),
        ints(&[
            ("a", 20),
            ("b", 3),
            ("d", 4),
            ("c", 12),
            ("z", 26),
            ("y", 25)
        ])
    );
    // Many keys: order is insertion order, not sorted or hashed.
    let fx = open(names(&["big"]));
    let st = &*fx.store;
    let keys: Vec<String> = (0..200)
        .map(|i| format!("k{}", (i * 7919) % 1000))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        set(st, 0, k, Value::Int(i as i64));
    }
    let got: Vec<String> = wait(st.hashmap_entries(MapId(0)))
        .unwrap()
        .into_iter()
        .map(|(k, _)| k.to_string())
        .collect();
    assert_eq!(got, keys);
}

fn hashmap_clear_empties_only_that_hashmap(open: Open) {
    let fx = open(names(&["one", "two"]));
    let st = &*fx.store;
    wait(st.hashmap_clear(MapId(0))).unwrap(); // clearing an empty hashmap is fine
    set(st, 0, "a", Value::Int(1));
    set(st, 0, "b", Value::Int(2));
    set(st, 1, "a", Value::Int(100));
    assert_same_opt(&get(st, 1, "a"), Some(&Value::Int(100)));
    assert_same_opt(&get(st, 0, "a"), Some(&Value::Int(1)));
    wait(st.hashmap_clear(MapId(0))).unwrap();
    assert_eq!(wait(st.hashmap_len(MapId(0))).unwrap(), 0);
    assert!(wait(st.hashmap_entries(MapId(0))).unwrap().is_empty());
    assert!(!wait(st.hashmap_has(MapId(0), "a")).unwrap());
    assert_eq!(listing(st, 1), ints(&[("a", 100)]));
    // Usable after a clear, order starting afresh.
    set(st, 0, "b", Value::Int(3));
    set(st, 0, "a", Value::Int(4));
    assert_eq!(listing(st, 0), ints(&[("b", 3), ("a", 4)]));
}

fn hashmap_unknown_index_is_an_error(open: Open) {
    let fx = open(names(&["only"]));
    let st = &*fx.store;
    let errors = [
        wait(st.hashmap_set(MapId(5), s("k"), Value::Int(1))).err(),
        wait(st.hashmap_get(MapId(5), "k")).err(),
        wait(st.hashmap_has(MapId(5), "k")).err(),
        wait(st.hashmap_delete(MapId(5), "k")).err(),
        wait(st.hashmap_entries(MapId(5))).err(),
        wait(st.hashmap_len(MapId(5))).err(),
        wait(st.hashmap_clear(MapId(5))).err(),
        wait(st.hashmap_set_many(MapId(5), vec![])).err(),
        wait(st.hashmap_get_many(MapId(5), vec![s("k")])).err(),
        wait(st.hashmap_replace(MapId(5), s("k"), Value::Int(1))).err(),
        wait(st.hashmap_remove(MapId(5), "k")).err(),
    ];
    for (i, err) in errors.into_iter().enumerate() {
        let err = err.unwrap_or_else(|| panic!("operation {i} on hashmap #5 succeeded"));
        assert!(err.message.contains("hashmap #5"), "{err}");
    }
    assert_eq!(wait(st.hashmap_len(MapId(0))).unwrap(), 0);
}

fn hashmap_set_many_and_get_many(open: Open) {
    let fx = open(names(&["store"]));
    let st = &*fx.store;
    wait(st.hashmap_set_many(MapId(0), vec![])).unwrap();
    assert_eq!(wait(st.hashmap_len(MapId(0))).unwrap(), 0);
    set(st, 0, "b", Value::Int(0));
    // A key twice in one batch: the later value wins, the first occurrence places it.
    wait(st.hashmap_set_many(
        MapId(0),
        vec![
            (s("a"), Value::Int(1)),
            (s("b"), Value::Int(2)),
            (s("c"), Value::Int(3)),
            (s("a"), Value::str("again")),
        ],
    ))
    .unwrap();
    assert_eq!(
        listing(st, 0),
        vec![
            format!("b={}", exact(&Value::Int(2))),
            format!("a={}", exact(&Value::str("again"))),
            format!("c={}", exact(&Value::Int(3))),
        ]
    );
    let got =
        wait(st.hashmap_get_many(MapId(0), vec![s("c"), s("missing"), s("a"), s("c")])).unwrap();
    assert_eq!(got.len(), 4);
    assert_same_opt(&got[0], Some(&Value::Int(3)));
    assert_same_opt(&got[1], None);
    assert_same_opt(&got[2], Some(&Value::str("again")));
    assert_same_opt(&got[3], Some(&Value::Int(3)));
    assert!(
        wait(st.hashmap_get_many(MapId(0), vec![]))
            .unwrap()
            .is_empty()
    );
}

fn hashmap_replace_and_remove_return_the_old_value(open: Open) {
    let fx = open(names(&["store"]));
    let st = &*fx.store;
    let old = wait(st.hashmap_replace(MapId(0), s("k"), Value::Int(1))).unwrap();
    assert_same_opt(&old, None);
    set(st, 0, "other", Value::Int(0));
    let old = wait(st.hashmap_replace(MapId(0), s("k"), Value::str("two"))).unwrap();
    assert_same_opt(&old, Some(&Value::Int(1)));
    assert_same_opt(&get(st, 0, "k"), Some(&Value::str("two")));
    // replace keeps the position like set.
    assert_eq!(
        listing(st, 0),
        vec![
            format!("k={}", exact(&Value::str("two"))),
            format!("other={}", exact(&Value::Int(0))),
        ]
    );
    let old = wait(st.hashmap_remove(MapId(0), "k")).unwrap();
    assert_same_opt(&old, Some(&Value::str("two")));
    assert_same_opt(&wait(st.hashmap_remove(MapId(0), "k")).unwrap(), None);
    assert!(!wait(st.hashmap_has(MapId(0), "k")).unwrap());
    assert_eq!(wait(st.hashmap_len(MapId(0))).unwrap(), 1);
    // A removed key that comes back goes last.
    wait(st.hashmap_replace(MapId(0), s("k"), Value::Int(3))).unwrap();
    assert_eq!(listing(st, 0), ints(&[("other", 0), ("k", 3)]));
}

// ---- ledgers -----------------------------------------------------------------------------

fn ledger_insert_upserts_and_updates(open: Open) {
    let fx = open(names(&[]));
    let st = &*fx.store;
    assert!(wait(st.ledger_entries("notes")).unwrap().is_empty());
    for (id, keys, v) in [
        ("first", &["a"][..], 1),
        ("second", &["b", "c"][..], 2),
        ("third", &[][..], 3),
    ] {
        wait(st.ledger_insert("notes", entry(id, keys, Value::Int(v)))).unwrap();
    }
    let all = wait(st.ledger_entries("notes")).unwrap();
    assert_eq!(ids(&all), ["first", "second", "third"]);
    assert_eq!(all[1].keys, strings(&["b", "c"]));
    assert!(all[2].keys.is_empty());
    assert_same(&all[2].value, &Value::Int(3));

    // Insert of an existing identifier replaces keys and value in place.
    wait(st.ledger_insert("notes", entry("first", &["z"], Value::str("new")))).unwrap();
    let all = wait(st.ledger_entries("notes")).unwrap();
    assert_eq!(ids(&all), ["first", "second", "third"]);
    assert_eq!(all[0].keys, strings(&["z"]));
    assert_same(&all[0].value, &Value::str("new"));

    // update / update_keys: whether the entry existed.
    assert!(wait(st.ledger_update("notes", "second", Value::Float(2.5))).unwrap());
    assert!(!wait(st.ledger_update("notes", "nope", Value::Int(0))).unwrap());
    assert!(!wait(st.ledger_update("elsewhere", "second", Value::Int(0))).unwrap());
    assert!(wait(st.ledger_update_keys("notes", "third", strings(&["x", "y"]))).unwrap());
    assert!(!wait(st.ledger_update_keys("notes", "nope", strings(&["x"]))).unwrap());
    let all = wait(st.ledger_entries("notes")).unwrap();
    assert_eq!(all[1].keys, strings(&["b", "c"]), "update keeps the keys");
    assert_same(&all[1].value, &Value::Float(2.5));
    assert_eq!(all[2].keys, strings(&["x", "y"]));
    assert_same(&all[2].value, &Value::Int(3));
    // Identifiers are exact: another case is another entry.
    assert!(!wait(st.ledger_update("notes", "First", Value::Int(0))).unwrap());

    // delete: whether it existed; a re-inserted entry goes last.
    assert!(wait(st.ledger_delete("notes", "first")).unwrap());
    assert!(!wait(st.ledger_delete("notes", "first")).unwrap());
    assert!(!wait(st.ledger_delete("missing-ledger", "first")).unwrap());
    wait(st.ledger_insert("notes", entry("first", &["a"], Value::Nil))).unwrap();
    assert_eq!(
        ids(&wait(st.ledger_entries("notes")).unwrap()),
        ["second", "third", "first"]
    );

    // clear
    wait(st.ledger_clear("notes")).unwrap();
    assert!(wait(st.ledger_entries("notes")).unwrap().is_empty());
    wait(st.ledger_clear("never-used")).unwrap();
    wait(st.ledger_insert("notes", entry("after", &[], Value::Int(1)))).unwrap();
    assert_eq!(ids(&wait(st.ledger_entries("notes")).unwrap()), ["after"]);
}

fn ledger_queries(open: Open) {
    let fx = open(names(&[]));
    let st = &*fx.store;
    let l = "kb";
    for (id, keys) in [
        ("Quarterly Report: Sales", &["Finance", "q3"][..]),
        ("sales pipeline review", &["sales", "Q3"][..]),
        ("Team offsite (Berlin)", &["travel"][..]),
        ("snake_case-id notes", &["misc", "finance"][..]),
        ("Reporting guidelines", &[][..]),
    ] {
        wait(st.ledger_insert(l, entry(id, keys, Value::str(id)))).unwrap();
    }
    use LedgerQuery::*;
    // Identifier: every query word must be a word of the identifier (punctuation dropped,
    // case-insensitive, any order); a partial word does not match.
    assert_eq!(
        query(st, l, Identifier("sales".into())),
        strings(&["Quarterly Report: Sales", "sales pipeline review"])
    );
    assert_eq!(
        query(st, l, Identifier("SALES report".into())),
        strings(&["Quarterly Report: Sales"])
    );
    assert_eq!(
        query(st, l, Identifier("report:".into())),
        strings(&["Quarterly Report: Sales"])
    );
    assert!(query(st, l, Identifier("repo".into())).is_empty());
    assert_eq!(
        query(st, l, Identifier("berlin".into())),
        strings(&["Team offsite (Berlin)"])
    );
    assert_eq!(
        query(st, l, Identifier("snake_case-id".into())),
        strings(&["snake_case-id notes"])
    );
    assert!(query(st, l, Identifier("".into())).is_empty());
    assert!(query(st, l, Identifier("  ?! ".into())).is_empty());
    // Key: case-insensitive, exact key.
    assert_eq!(
        query(st, l, Key("finance".into())),
        strings(&["Quarterly Report: Sales", "snake_case-id notes"])
    );
    assert_eq!(
        query(st, l, Key("Q3".into())),
        strings(&["Quarterly Report: Sales", "sales pipeline review"])
    );
    assert!(query(st, l, Key("fin".into())).is_empty());
    // AnyKeys: at least one.
    assert_eq!(
        query(st, l, AnyKeys(strings(&["TRAVEL", "misc"]))),
        strings(&["Team offsite (Berlin)", "snake_case-id notes"])
    );
    assert!(query(st, l, AnyKeys(vec![])).is_empty());
    // ExactKeys: all of them (an empty list matches every entry).
    assert_eq!(
        query(st, l, ExactKeys(strings(&["q3", "finance"]))),
        strings(&["Quarterly Report: Sales"])
    );
    assert_eq!(query(st, l, ExactKeys(vec![])).len(), 5);
    assert!(query(st, l, ExactKeys(strings(&["q3", "travel"]))).is_empty());
    // Results carry the keys and values, in insertion order.
    let found = wait(st.ledger_query(l, Key("sales".into()))).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].keys, strings(&["sales", "Q3"]));
    assert_same(&found[0].value, &Value::str("sales pipeline review"));
    // A ledger nobody wrote answers nothing.
    assert!(query(st, "empty", ExactKeys(vec![])).is_empty());
}

fn ledgers_are_scoped_by_name(open: Open) {
    let fx = open(names(&[]));
    let st = &*fx.store;
    wait(st.ledger_insert("a", entry("same", &["k"], Value::Int(1)))).unwrap();
    wait(st.ledger_insert("b", entry("same", &["k"], Value::Int(2)))).unwrap();
    wait(st.ledger_insert("a::scoped", entry("other", &["k"], Value::Int(3)))).unwrap();
    let a = wait(st.ledger_entries("a")).unwrap();
    assert_eq!(ids(&a), ["same"]);
    assert_same(&a[0].value, &Value::Int(1));
    assert_eq!(
        query(st, "b", LedgerQuery::Key("k".into())),
        strings(&["same"])
    );
    assert!(wait(st.ledger_update("b", "same", Value::Int(20))).unwrap());
    assert_same(
        &wait(st.ledger_entries("a")).unwrap()[0].value,
        &Value::Int(1),
    );
    assert!(wait(st.ledger_delete("a", "same")).unwrap());
    assert_eq!(wait(st.ledger_entries("b")).unwrap().len(), 1);
    wait(st.ledger_clear("b")).unwrap();
    assert_eq!(
        ids(&wait(st.ledger_entries("a::scoped")).unwrap()),
        ["other"]
    );
    assert!(wait(st.ledger_entries("a")).unwrap().is_empty());
    assert!(wait(st.ledger_entries("b")).unwrap().is_empty());
}

// ---- memories ----------------------------------------------------------------------------

fn memory_append_window_messages_clear(open: Open) {
    let fx = open(names(&[]));
    let st = &*fx.store;
    let msg = |i: usize| {
        ChatMessage::new(
            if i.is_multiple_of(2) {
                "user"
            } else {
                "assistant"
            },
            format!("m{i}"),
        )
    };
    let contents = |name: &str| -> Vec<String> {
        wait(st.memory_messages(name))
            .unwrap()
            .into_iter()
            .map(|m| m.content)
            .collect()
    };
    assert!(contents("chat").is_empty());
    for i in 0..3 {
        wait(st.memory_append("chat", None, msg(i))).unwrap();
    }
    assert_eq!(contents("chat"), strings(&["m0", "m1", "m2"]));
    // The window keeps the newest.
    for i in 3..6 {
        wait(st.memory_append("chat", Some(4), msg(i))).unwrap();
    }
    assert_eq!(contents("chat"), strings(&["m2", "m3", "m4", "m5"]));
    wait(st.memory_append("chat", Some(2), msg(6))).unwrap();
    assert_eq!(contents("chat"), strings(&["m5", "m6"]));
    wait(st.memory_append("chat", None, msg(7))).unwrap();
    assert_eq!(contents("chat"), strings(&["m5", "m6", "m7"]));
    wait(st.memory_append("chat", Some(u64::MAX), msg(8))).unwrap();
    assert_eq!(contents("chat").len(), 4);
    wait(st.memory_append("zero", Some(0), msg(0))).unwrap();
    assert!(contents("zero").is_empty());

    // Every field of a message round-trips.
    let call = ToolCall {
        id: "call_1".into(),
        name: "Search::find".into(),
        arguments: serde_json::json!({"q": "x", "n": 2, "deep": [1.5, null, {"a": true}]}),
    };
    let asked = ChatMessage::assistant_tool_calls("looking", vec![call]);
    let answer = ChatMessage {
        role: "tool".into(),
        content: "{\"found\": 1}".into(),
        tool_calls: vec![],
        tool_call_id: Some("call_1".into()),
        name: Some("Search::find".into()),
        // A tool's images are kept with its result.
        images: vec![concerto_runtime::vm::host::ImagePart {
            mime_type: "image/png".into(),
            data: "iVBORw0KGgo=".into(),
        }],
    };
    wait(st.memory_append("tools", None, asked.clone())).unwrap();
    wait(st.memory_append("tools", None, answer.clone())).unwrap();
    assert_eq!(
        wait(st.memory_messages("tools")).unwrap(),
        vec![asked, answer]
    );

    // Memories are separate; clear empties one and it can be used again.
    assert_eq!(contents("chat").len(), 4);
    wait(st.memory_clear("chat")).unwrap();
    assert!(contents("chat").is_empty());
    assert_eq!(wait(st.memory_messages("tools")).unwrap().len(), 2);
    wait(st.memory_clear("never-used")).unwrap();
    wait(st.memory_append("chat", Some(3), msg(9))).unwrap();
    assert_eq!(contents("chat"), strings(&["m9"]));
}

// ---- values ------------------------------------------------------------------------------

fn values_of_every_kind_round_trip(open: Open) {
    let fx = open(names(&["values"]));
    let st = &*fx.store;
    let samples = sample_values();
    for (key, value) in &samples {
        set(st, 0, key, value.clone());
    }
    for (key, value) in &samples {
        assert_same_opt(&get(st, 0, key), Some(value));
    }
    let entries = wait(st.hashmap_entries(MapId(0))).unwrap();
    assert_eq!(entries.len(), samples.len());
    for ((k, v), (key, value)) in entries.iter().zip(&samples) {
        assert_eq!(k.as_str(), *key);
        assert_same(v, value);
    }
    // Through set_many / get_many / replace / remove too.
    let fx2 = open(names(&["values"]));
    let st2 = &*fx2.store;
    wait(st2.hashmap_set_many(
        MapId(0),
        samples.iter().map(|(k, v)| (s(k), v.clone())).collect(),
    ))
    .unwrap();
    let got =
        wait(st2.hashmap_get_many(MapId(0), samples.iter().map(|(k, _)| s(k)).collect())).unwrap();
    for (got, (_, value)) in got.iter().zip(&samples) {
        assert_same_opt(got, Some(value));
    }
    for (key, value) in &samples {
        let old = wait(st2.hashmap_replace(MapId(0), s(key), Value::Int(0))).unwrap();
        assert_same_opt(&old, Some(value));
    }
    for (key, value) in &samples {
        wait(st2.hashmap_set(MapId(0), s(key), value.clone())).unwrap();
        let old = wait(st2.hashmap_remove(MapId(0), key)).unwrap();
        assert_same_opt(&old, Some(value));
    }
    // As ledger values.
    for (key, value) in &samples {
        wait(st.ledger_insert("values", entry(key, &[key], value.clone()))).unwrap();
    }
    let all = wait(st.ledger_entries("values")).unwrap();
    assert_eq!(all.len(), samples.len());
    for (e, (key, value)) in all.iter().zip(&samples) {
        assert_eq!(e.identifier, *key);
        assert_same(&e.value, value);
    }
    for (key, value) in &samples {
        assert!(wait(st.ledger_update("values", key, value.clone())).unwrap());
        let found = wait(st.ledger_query("values", LedgerQuery::Key(key.to_string()))).unwrap();
        assert_eq!(found.len(), 1, "{key}");
        assert_same(&found[0].value, value);
    }
}

fn unusual_keys_and_identifiers(open: Open) {
    let fx = open(names(&["store"]));
    let st = &*fx.store;
    let keys = [
        "",
        " ",
        "with space",
        "ünïcödé ✓",
        "🎼",
        "a\0b",
        "'; DROP TABLE hashmap_entries; --",
        "%_like",
        "K",
        "k",
    ];
    for (i, k) in keys.iter().enumerate() {
        set(st, 0, k, Value::Int(i as i64));
    }
    assert_eq!(wait(st.hashmap_len(MapId(0))).unwrap(), keys.len());
    for (i, k) in keys.iter().enumerate() {
        assert_same_opt(&get(st, 0, k), Some(&Value::Int(i as i64)));
    }
    let listed: Vec<String> = wait(st.hashmap_entries(MapId(0)))
        .unwrap()
        .into_iter()
        .map(|(k, _)| k.to_string())
        .collect();
    assert_eq!(listed, strings(&keys));
    assert!(wait(st.hashmap_delete(MapId(0), "%_like")).unwrap());
    assert!(!wait(st.hashmap_has(MapId(0), "%")).unwrap());
    for (i, k) in keys.iter().enumerate() {
        wait(st.ledger_insert("odd ledger ✓", entry(k, &[k], Value::Int(i as i64)))).unwrap();
        wait(st.memory_append(k, None, ChatMessage::new("user", *k))).unwrap();
    }
    assert_eq!(
        ids(&wait(st.ledger_entries("odd ledger ✓")).unwrap()),
        keys.to_vec()
    );
    for k in keys {
        let messages = wait(st.memory_messages(k)).unwrap();
        assert_eq!(messages.len(), 1, "memory {k:?}");
        assert_eq!(messages[0].content, k);
    }
}

// ---- durable backends --------------------------------------------------------------------

fn state_survives_a_restart(open: Open) {
    let mut fx = open(names(&["counts", "values"]));
    {
        let st = &*fx.store;
        for (k, v) in [("c", 1), ("a", 2), ("b", 3)] {
            set(st, 0, k, Value::Int(v));
        }
        set(st, 0, "c", Value::Int(10));
        wait(st.hashmap_delete(MapId(0), "a")).unwrap();
        set(st, 0, "a", Value::Int(20));
        for (key, value) in sample_values() {
            set(st, 1, key, value);
        }
        wait(st.ledger_insert("log", entry("one", &["x"], Value::Int(1)))).unwrap();
        wait(st.ledger_insert("log", entry("two", &["y"], Value::str("2")))).unwrap();
        wait(st.memory_append("chat", Some(2), ChatMessage::new("user", "hi"))).unwrap();
        wait(st.memory_append("chat", Some(2), ChatMessage::new("assistant", "hello"))).unwrap();
        wait(st.memory_append("chat", Some(2), ChatMessage::new("user", "bye"))).unwrap();
    }
    fx.restart();
    let st = &*fx.store;
    assert_eq!(listing(st, 0), ints(&[("c", 10), ("b", 3), ("a", 20)]));
    let samples = sample_values();
    let entries = wait(st.hashmap_entries(MapId(1))).unwrap();
    assert_eq!(entries.len(), samples.len());
    for ((k, v), (key, value)) in entries.iter().zip(&samples) {
        assert_eq!(k.as_str(), *key);
        assert_same(v, value);
    }
    let log = wait(st.ledger_entries("log")).unwrap();
    assert_eq!(ids(&log), ["one", "two"]);
    assert_eq!(log[1].keys, strings(&["y"]));
    assert_same(&log[1].value, &Value::str("2"));
    let chat: Vec<String> = wait(st.memory_messages("chat"))
        .unwrap()
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(chat, strings(&["hello", "bye"]));

    // Writes after the restart continue the same order and window.
    set(st, 0, "new", Value::Int(5));
    set(st, 0, "c", Value::Int(11));
    wait(st.ledger_insert("log", entry("one", &["z"], Value::Int(9)))).unwrap();
    wait(st.ledger_insert("log", entry("three", &[], Value::Nil))).unwrap();
    wait(st.memory_append("chat", Some(2), ChatMessage::new("assistant", "ciao"))).unwrap();
    fx.restart();
    let st = &*fx.store;
    assert_eq!(
        listing(st, 0),
        ints(&[("c", 11), ("b", 3), ("a", 20), ("new", 5)])
    );
    assert_eq!(
        ids(&wait(st.ledger_entries("log")).unwrap()),
        ["one", "two", "three"]
    );
    let chat: Vec<String> = wait(st.memory_messages("chat"))
        .unwrap()
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(chat, strings(&["bye", "ciao"]));
}

fn run_journals_keep_order_and_survive_a_restart(open: Open) {
    let mut fx = open(names(&[]));
    let records = |st: &dyn MemoryStore, run: &str| wait(st.journal_records(run)).unwrap();
    {
        let st = &*fx.store;
        assert!(records(st, "run-1").is_empty());
        for i in 0..5 {
            wait(st.journal_append("run-1", format!("{{\"seq\":{i}}}"))).unwrap();
        }
        wait(st.journal_append("run-2", "other ✓\nline".to_string())).unwrap();
        wait(st.journal_append("run-1", String::new())).unwrap();
    }
    fx.restart();
    let st = &*fx.store;
    let mut expected: Vec<String> = (0..5).map(|i| format!("{{\"seq\":{i}}}")).collect();
    expected.push(String::new());
    assert_eq!(records(st, "run-1"), expected);
    assert_eq!(records(st, "run-2"), strings(&["other ✓\nline"]));
    assert!(records(st, "run-3").is_empty());
    wait(st.journal_append("run-2", "more".to_string())).unwrap();
    assert_eq!(records(st, "run-2"), strings(&["other ✓\nline", "more"]));
}
