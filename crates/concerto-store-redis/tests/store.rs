//! Every `MemoryStore` method of the Redis store against a real `redis-server` (started by
//! each test on a free loopback port), most of them compared with `concerto-memory`'s
//! in-memory store doing the same operations.

use concerto_vm::host::MapId;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::{
    Lcg, RedisServer, block_on, enc, enc_entries, eventually, raw_command, s, wait,
};
use concerto_memory::{HashMapChange, InMemoryStore};
use concerto_store_redis::{RedisOptions, RedisStore};
use concerto_vm::host::{
    ChatMessage, ConversationStore, HashmapStore, HostErrorKind, LedgerEntry, LedgerQuery,
    LedgerStore, MemoryStore, Reply, ToolCall,
};
use concerto_vm::{EnumObj, Str, Value};
use parking_lot::Mutex;

const NAMES: [&str; 2] = ["store", "other"];

fn names() -> Vec<String> {
    NAMES.iter().map(|n| n.to_string()).collect()
}

fn connect(server: &RedisServer, program: &str) -> RedisStore {
    RedisStore::connect(&server.url(), program, names()).expect("connect")
}

fn entries(store: &dyn MemoryStore, map: u32) -> Vec<(String, serde_json::Value)> {
    enc_entries(&wait(store.hashmap_entries(MapId(map))).unwrap())
}

fn keys_of(store: &dyn MemoryStore, map: u32) -> Vec<String> {
    entries(store, map).into_iter().map(|(k, _)| k).collect()
}

fn entry(id: &str, keys: &[&str], value: Value) -> LedgerEntry {
    LedgerEntry {
        identifier: id.to_string(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        value,
    }
}

fn ledger_view(entries: &[LedgerEntry]) -> Vec<(String, Vec<String>, serde_json::Value)> {
    entries
        .iter()
        .map(|e| (e.identifier.clone(), e.keys.clone(), enc(&e.value)))
        .collect()
}

fn variant(type_name: &str, variant: &str, ids: (u32, u32), payload: Vec<Value>) -> Value {
    Value::Enum(Arc::new(EnumObj {
        type_name: type_name.into(),
        variant: variant.into(),
        type_id: ids.0,
        variant_id: ids.1,
        field_names: None,
        payload,
    }))
}

#[test]
fn hashmap_set_get_has_len_delete() {
    let server = RedisServer::start();
    let store = connect(&server, "basic");
    assert!(matches!(
        store.hashmap_get(MapId(0), "a"),
        Reply::Pending(_)
    ));
    assert!(wait(store.hashmap_get(MapId(0), "a")).unwrap().is_none());
    assert!(!wait(store.hashmap_has(MapId(0), "a")).unwrap());
    assert_eq!(wait(store.hashmap_len(MapId(0))).unwrap(), 0);

    wait(store.hashmap_set(MapId(0), s("a"), Value::Int(1))).unwrap();
    wait(store.hashmap_set(MapId(0), s("b"), Value::str("two"))).unwrap();
    wait(store.hashmap_set(MapId(0), s("c"), Value::Nil)).unwrap();
    assert_eq!(
        enc(&wait(store.hashmap_get(MapId(0), "a")).unwrap().unwrap()),
        enc(&Value::Int(1))
    );
    // A stored nil is present, not absent.
    assert!(matches!(
        wait(store.hashmap_get(MapId(0), "c")).unwrap(),
        Some(Value::Nil)
    ));
    assert!(wait(store.hashmap_has(MapId(0), "c")).unwrap());
    assert_eq!(wait(store.hashmap_len(MapId(0))).unwrap(), 3);
    // The other hashmap is separate.
    assert_eq!(wait(store.hashmap_len(MapId(1))).unwrap(), 0);

    assert!(wait(store.hashmap_delete(MapId(0), "a")).unwrap());
    assert!(!wait(store.hashmap_delete(MapId(0), "a")).unwrap());
    assert!(!wait(store.hashmap_has(MapId(0), "a")).unwrap());
    assert_eq!(wait(store.hashmap_len(MapId(0))).unwrap(), 2);

    wait(store.hashmap_clear(MapId(0))).unwrap();
    assert_eq!(wait(store.hashmap_len(MapId(0))).unwrap(), 0);
    assert!(entries(&store, 0).is_empty());
    // Clearing an empty hashmap is fine.
    wait(store.hashmap_clear(MapId(0))).unwrap();
}

#[test]
fn insertion_order_matches_the_in_memory_store() {
    let server = RedisServer::start();
    let redis = connect(&server, "order");
    let memory = InMemoryStore::with_names(NAMES);
    for store in [&redis as &dyn MemoryStore, &memory] {
        for k in ["a", "b", "c", "d"] {
            wait(store.hashmap_set(MapId(0), s(k), Value::str(k))).unwrap();
        }
        // An update keeps the key's place…
        wait(store.hashmap_set(MapId(0), s("b"), Value::Int(2))).unwrap();
        // …a deleted and re-inserted key goes last.
        wait(store.hashmap_delete(MapId(0), "a")).unwrap();
        wait(store.hashmap_set(MapId(0), s("a"), Value::Int(1))).unwrap();
        // A scoped view is a key prefix inside the hashmap.
        wait(store.hashmap_set(MapId(0), s("agent:result"), Value::Int(9))).unwrap();
    }
    assert_eq!(keys_of(&redis, 0), ["b", "c", "d", "a", "agent:result"]);
    assert_eq!(entries(&redis, 0), entries(&memory, 0));
    // After a clear, order starts afresh.
    wait(redis.hashmap_clear(MapId(0))).unwrap();
    wait(redis.hashmap_set(MapId(0), s("z"), Value::Int(0))).unwrap();
    wait(redis.hashmap_set(MapId(0), s("y"), Value::Int(0))).unwrap();
    assert_eq!(keys_of(&redis, 0), ["z", "y"]);
}

#[test]
fn replace_and_remove_return_previous_values() {
    let server = RedisServer::start();
    let store = connect(&server, "replace");
    assert!(
        wait(store.hashmap_replace(MapId(0), s("k"), Value::Int(1)))
            .unwrap()
            .is_none()
    );
    let old = wait(store.hashmap_replace(MapId(0), s("k"), Value::some(Value::Int(2)))).unwrap();
    assert_eq!(enc(&old.unwrap()), enc(&Value::Int(1)));
    let old = wait(store.hashmap_replace(MapId(0), s("k"), Value::Nil)).unwrap();
    assert_eq!(enc(&old.unwrap()), enc(&Value::some(Value::Int(2))));
    // A stored nil comes back as Some(Nil), not as absent.
    let removed = wait(store.hashmap_remove(MapId(0), "k")).unwrap();
    assert!(matches!(removed, Some(Value::Nil)));
    assert!(wait(store.hashmap_remove(MapId(0), "k")).unwrap().is_none());
}

#[test]
fn get_many_reads_values_in_the_order_asked() {
    let server = RedisServer::start();
    let store = connect(&server, "getmany");
    wait(store.hashmap_set_many(
        MapId(0),
        vec![(s("a"), Value::Int(1)), (s("b"), Value::Int(2))],
    ))
    .unwrap();
    let got = wait(store.hashmap_get_many(MapId(0), vec![s("b"), s("x"), s("a"), s("b")])).unwrap();
    let got: Vec<Option<serde_json::Value>> = got.iter().map(|v| v.as_ref().map(enc)).collect();
    assert_eq!(
        got,
        [
            Some(enc(&Value::Int(2))),
            None,
            Some(enc(&Value::Int(1))),
            Some(enc(&Value::Int(2)))
        ]
    );
    assert!(
        wait(store.hashmap_get_many(MapId(0), vec![]))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn random_operations_match_the_in_memory_store() {
    let server = RedisServer::start();
    let redis = connect(&server, "random");
    let memory = InMemoryStore::with_names(NAMES);
    let pool = [
        "a", "b", "c", "d", "e", "f", "x:1", "x:2", "y:result", "é", "sp ace", "",
    ];
    let mut rng = Lcg(7);
    let value = |rng: &mut Lcg| match rng.below(5) {
        0 => Value::Int(rng.below(100) as i64),
        1 => Value::str(format!("v{}", rng.below(100))),
        2 => Value::Nil,
        3 => Value::some(Value::Float(rng.below(10) as f64 / 4.0)),
        _ => Value::array(vec![Value::Int(1), Value::None]),
    };
    for step in 0..400 {
        let map = rng.below(2) as u32;
        let key = pool[rng.below(pool.len() as u64) as usize];
        let stores: [&dyn MemoryStore; 2] = [&redis, &memory];
        match rng.below(20) {
            0..=6 => {
                let v = value(&mut rng);
                for st in stores {
                    wait(st.hashmap_set(MapId(map), s(key), v.clone())).unwrap();
                }
            }
            7..=9 => {
                let v = value(&mut rng);
                let a = wait(redis.hashmap_replace(MapId(map), s(key), v.clone())).unwrap();
                let b = wait(memory.hashmap_replace(MapId(map), s(key), v)).unwrap();
                assert_eq!(a.as_ref().map(enc), b.as_ref().map(enc), "step {step}");
            }
            10..=11 => {
                let a = wait(redis.hashmap_delete(MapId(map), key)).unwrap();
                let b = wait(memory.hashmap_delete(MapId(map), key)).unwrap();
                assert_eq!(a, b, "step {step}");
            }
            12..=13 => {
                let a = wait(redis.hashmap_remove(MapId(map), key)).unwrap();
                let b = wait(memory.hashmap_remove(MapId(map), key)).unwrap();
                assert_eq!(a.as_ref().map(enc), b.as_ref().map(enc), "step {step}");
            }
            14..=16 => {
                // Batches may repeat a key: the later value wins, the first place counts.
                let n = 1 + rng.below(5);
                let batch: Vec<(Str, Value)> = (0..n)
                    .map(|_| {
                        let k = pool[rng.below(pool.len() as u64) as usize];
                        (s(k), value(&mut rng))
                    })
                    .collect();
                for st in stores {
                    wait(st.hashmap_set_many(MapId(map), batch.clone())).unwrap();
                }
            }
            17 => {
                let keys: Vec<Str> = pool.iter().take(6).map(|k| s(k)).collect();
                let a = wait(redis.hashmap_get_many(MapId(map), keys.clone())).unwrap();
                let b = wait(memory.hashmap_get_many(MapId(map), keys)).unwrap();
                let a: Vec<_> = a.iter().map(|v| v.as_ref().map(enc)).collect();
                let b: Vec<_> = b.iter().map(|v| v.as_ref().map(enc)).collect();
                assert_eq!(a, b, "step {step}");
            }
            18 => {
                assert_eq!(
                    wait(redis.hashmap_has(MapId(map), key)).unwrap(),
                    wait(memory.hashmap_has(MapId(map), key)).unwrap()
                );
                assert_eq!(
                    wait(redis.hashmap_len(MapId(map))).unwrap(),
                    wait(memory.hashmap_len(MapId(map))).unwrap()
                );
            }
            _ => {
                if rng.below(3) == 0 {
                    for st in stores {
                        wait(st.hashmap_clear(MapId(map))).unwrap();
                    }
                }
            }
        }
        assert_eq!(entries(&redis, map), entries(&memory, map), "step {step}");
    }
}

#[test]
fn values_of_every_kind_round_trip() {
    let server = RedisServer::start();
    let store = connect(&server, "kinds");
    let values = vec![
        Value::Nil,
        Value::Bool(true),
        Value::Int(i64::MIN),
        Value::Int(i64::MAX),
        Value::Float(2.0),
        Value::Float(0.1),
        Value::Float(f64::NAN),
        Value::Float(f64::NEG_INFINITY),
        Value::str("héllo \"quoted\"\n\u{1F600} / \\ \u{0}"),
        Value::array(vec![Value::Int(1), Value::str("two"), Value::Nil]),
        Value::map([("z", Value::Int(1)), ("a", Value::Float(1.5))]),
        Value::map([("$some", Value::Int(1))]),
        Value::record(
            "Point",
            vec![("x", Value::Int(1)), ("y", Value::Float(2.0))],
        ),
        Value::some(Value::None),
        Value::ok(Value::Int(1)),
        Value::err(Value::str("bad")),
        variant(
            "Shape",
            "Rect",
            (4, 1),
            vec![Value::Int(2), Value::Float(3.0)],
        ),
    ];
    let batch: Vec<(Str, Value)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (s(&format!("k{i}")), v.clone()))
        .collect();
    wait(store.hashmap_set_many(MapId(0), batch.clone())).unwrap();
    for (key, value) in &batch {
        wait(store.hashmap_set(MapId(1), key.clone(), value.clone())).unwrap();
    }
    let expected = enc_entries(&batch);
    assert_eq!(entries(&store, 0), expected);
    assert_eq!(entries(&store, 1), expected);
    for (key, value) in &batch {
        let got = wait(store.hashmap_get(MapId(0), key)).unwrap().unwrap();
        assert_eq!(enc(&got), enc(value), "{key}");
    }
    // Keys with JSON-special and non-ASCII characters reach events and entries intact.
    let odd = "k/\"\\\n\t\u{1F600}";
    wait(store.hashmap_set(MapId(0), s(odd), Value::Int(1))).unwrap();
    assert!(wait(store.hashmap_has(MapId(0), odd)).unwrap());
}

#[test]
fn unstorable_values_fail_naming_the_key_and_write_nothing() {
    let server = RedisServer::start();
    let store = connect(&server, "unstorable");
    wait(store.hashmap_set(MapId(0), s("keep"), Value::Int(1))).unwrap();
    let err = wait(store.hashmap_set(MapId(0), s("fn"), Value::Builtin(0))).unwrap_err();
    assert!(err.message.contains("hashmap 'store'"), "{}", err.message);
    assert!(err.message.contains("'fn'"), "{}", err.message);

    // set_many: all or nothing — one bad value and no entry is written.
    let batch = vec![
        (s("keep"), Value::Int(2)),
        (s("new"), Value::Int(3)),
        (s("bad"), Value::array(vec![Value::Builtin(0)])),
    ];
    let err = wait(store.hashmap_set_many(MapId(0), batch)).unwrap_err();
    assert!(err.message.contains("'bad'"), "{}", err.message);
    assert!(
        err.message.contains("nothing was written"),
        "{}",
        err.message
    );
    assert_eq!(
        entries(&store, 0),
        [("keep".to_string(), enc(&Value::Int(1)))]
    );

    let err = wait(store.ledger_insert("facts", entry("id", &[], Value::Builtin(0)))).unwrap_err();
    assert!(err.message.contains("ledger 'facts'"), "{}", err.message);
    assert!(wait(store.ledger_entries("facts")).unwrap().is_empty());
}

#[test]
fn set_many_is_never_seen_half_written() {
    let server = RedisServer::start();
    let writer = connect(&server, "atomic");
    let reader = connect(&server, "atomic");
    let keys: Vec<Str> = (0..20).map(|i| s(&format!("k{i:02}"))).collect();
    let batch = |generation: i64| -> Vec<(Str, Value)> {
        keys.iter()
            .map(|k| (k.clone(), Value::Int(generation)))
            .collect()
    };
    wait(writer.hashmap_set_many(MapId(0), batch(0))).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reads = std::thread::scope(|scope| {
        let reader_thread = scope.spawn(|| {
            let mut reads = 0;
            while !done.load(Ordering::Acquire) {
                let got = wait(reader.hashmap_get_many(MapId(0), keys.clone())).unwrap();
                let first = enc(got[0].as_ref().unwrap());
                for v in &got {
                    assert_eq!(enc(v.as_ref().unwrap()), first, "a half-written batch");
                }
                let all = wait(reader.hashmap_entries(MapId(0))).unwrap();
                assert_eq!(all.len(), 20);
                assert!(all.iter().all(|(_, v)| enc(v) == enc(&all[0].1)));
                reads += 1;
            }
            reads
        });
        for generation in 1..=200 {
            wait(writer.hashmap_set_many(MapId(0), batch(generation))).unwrap();
        }
        done.store(true, Ordering::Release);
        reader_thread.join().unwrap()
    });
    assert!(reads > 0);
    assert_eq!(
        enc(&wait(reader.hashmap_get(MapId(0), "k07")).unwrap().unwrap()),
        enc(&Value::Int(200))
    );
}

#[test]
fn ledgers_match_the_in_memory_store() {
    let server = RedisServer::start();
    let redis = connect(&server, "ledgers");
    let memory = InMemoryStore::with_names(NAMES);
    let stores: [&dyn MemoryStore; 2] = [&redis, &memory];
    for st in stores {
        wait(st.ledger_insert(
            "facts",
            entry("Paris is in France", &["Geo", "city"], Value::Int(1)),
        ))
        .unwrap();
        wait(st.ledger_insert(
            "facts",
            entry("Berlin, capital!", &["geo"], Value::str("b")),
        ))
        .unwrap();
        wait(st.ledger_insert(
            "facts",
            entry("Zürich lake_side", &["GEO", "Lake"], Value::Nil),
        ))
        .unwrap();
        wait(st.ledger_insert("facts", entry("x-ray", &[], Value::some(Value::Int(3))))).unwrap();
        // Upsert: the existing identifier keeps its place, keys and value are replaced.
        wait(st.ledger_insert(
            "facts",
            entry("Paris is in France", &["city"], Value::Int(10)),
        ))
        .unwrap();
        // Another ledger is separate.
        wait(st.ledger_insert("other", entry("Paris is in France", &["x"], Value::Int(0))))
            .unwrap();
    }
    let all =
        |st: &dyn MemoryStore, name: &str| ledger_view(&wait(st.ledger_entries(name)).unwrap());
    assert_eq!(all(&redis, "facts"), all(&memory, "facts"));
    assert_eq!(all(&redis, "facts")[0].1, ["city"]);
    assert_eq!(all(&redis, "other"), all(&memory, "other"));
    assert!(all(&redis, "nothing").is_empty());

    let queries = [
        LedgerQuery::Identifier("paris FRANCE".into()),
        LedgerQuery::Identifier("berlin capital".into()),
        LedgerQuery::Identifier("zürich LAKE_SIDE".into()),
        LedgerQuery::Identifier("x-ray".into()),
        LedgerQuery::Identifier("!!! ,,,".into()),
        LedgerQuery::Identifier("paris berlin".into()),
        LedgerQuery::Key("geo".into()),
        LedgerQuery::Key("LAKE".into()),
        LedgerQuery::AnyKeys(vec!["lake".into(), "city".into()]),
        LedgerQuery::AnyKeys(vec![]),
        LedgerQuery::ExactKeys(vec!["geo".into(), "lake".into()]),
        LedgerQuery::ExactKeys(vec![]),
    ];
    for q in &queries {
        let a = ledger_view(&wait(redis.ledger_query("facts", q.clone())).unwrap());
        let b = ledger_view(&wait(memory.ledger_query("facts", q.clone())).unwrap());
        assert_eq!(a, b, "{q:?}");
    }
    assert_eq!(
        wait(redis.ledger_query("facts", LedgerQuery::Key("geo".into())))
            .unwrap()
            .len(),
        2
    );

    for st in stores {
        assert!(wait(st.ledger_update("facts", "x-ray", Value::str("new"))).unwrap());
        assert!(!wait(st.ledger_update("facts", "missing", Value::Nil)).unwrap());
        assert!(
            wait(st.ledger_update_keys("facts", "Berlin, capital!", vec!["Capital".into()]))
                .unwrap()
        );
        assert!(!wait(st.ledger_update_keys("facts", "missing", vec![])).unwrap());
        assert!(!wait(st.ledger_update("nothing", "x", Value::Nil)).unwrap());
    }
    assert_eq!(all(&redis, "facts"), all(&memory, "facts"));
    for st in stores {
        assert!(wait(st.ledger_delete("facts", "Paris is in France")).unwrap());
        assert!(!wait(st.ledger_delete("facts", "Paris is in France")).unwrap());
        // Re-inserted: goes last.
        wait(st.ledger_insert(
            "facts",
            entry("Paris is in France", &["again"], Value::Int(5)),
        ))
        .unwrap();
    }
    assert_eq!(all(&redis, "facts"), all(&memory, "facts"));
    assert_eq!(all(&redis, "facts").last().unwrap().0, "Paris is in France");
    for st in stores {
        wait(st.ledger_clear("facts")).unwrap();
    }
    assert!(all(&redis, "facts").is_empty());
    assert_eq!(all(&redis, "other").len(), 1);
}

#[test]
fn memories_keep_their_window_like_the_in_memory_store() {
    let server = RedisServer::start();
    let redis = connect(&server, "memories");
    let memory = InMemoryStore::with_names(NAMES);
    let stores: [&dyn MemoryStore; 2] = [&redis, &memory];
    let tool_turn = ChatMessage::assistant_tool_calls(
        "calling",
        vec![ToolCall {
            id: "c1".into(),
            name: "Search::run".into(),
            arguments: serde_json::json!({"q": "x", "n": 1.5}),
        }],
    );
    for st in stores {
        for i in 0..5 {
            wait(st.memory_append("chat", Some(3), ChatMessage::new("user", format!("m{i}"))))
                .unwrap();
        }
        wait(st.memory_append("chat", Some(3), tool_turn.clone())).unwrap();
        wait(st.memory_append(
            "chat",
            Some(3),
            ChatMessage::tool_result("c1", "Search::run", "found"),
        ))
        .unwrap();
        for i in 0..4 {
            wait(st.memory_append("all", None, ChatMessage::new("user", format!("a{i}")))).unwrap();
        }
        wait(st.memory_append("huge", Some(u64::MAX), ChatMessage::new("system", "s"))).unwrap();
        wait(st.memory_append("none", Some(0), ChatMessage::new("user", "gone"))).unwrap();
    }
    for name in ["chat", "all", "huge", "none", "never"] {
        assert_eq!(
            wait(redis.memory_messages(name)).unwrap(),
            wait(memory.memory_messages(name)).unwrap(),
            "{name}"
        );
    }
    let chat = wait(redis.memory_messages("chat")).unwrap();
    assert_eq!(chat.len(), 3);
    assert_eq!(chat[0].content, "m4");
    assert_eq!(chat[1], tool_turn);
    wait(redis.memory_clear("chat")).unwrap();
    assert!(wait(redis.memory_messages("chat")).unwrap().is_empty());
    assert_eq!(wait(redis.memory_messages("all")).unwrap().len(), 4);
}

#[test]
fn programs_are_isolated_and_keys_follow_the_layout() {
    let server = RedisServer::start();
    let a = connect(&server, "app:a");
    let b = connect(&server, "app");
    wait(a.hashmap_set(MapId(0), s("k"), Value::Int(1))).unwrap();
    wait(b.hashmap_set(MapId(0), s("k"), Value::Int(2))).unwrap();
    wait(a.ledger_insert("facts", entry("id", &["k"], Value::Int(1)))).unwrap();
    wait(a.memory_append("chat", None, ChatMessage::new("user", "hi"))).unwrap();
    assert_eq!(
        enc(&wait(a.hashmap_get(MapId(0), "k")).unwrap().unwrap()),
        enc(&Value::Int(1))
    );
    assert_eq!(
        enc(&wait(b.hashmap_get(MapId(0), "k")).unwrap().unwrap()),
        enc(&Value::Int(2))
    );
    assert!(wait(b.ledger_entries("facts")).unwrap().is_empty());
    assert!(wait(b.memory_messages("chat")).unwrap().is_empty());

    let redis::Value::Array(keys) = raw_command(&server.url(), &["KEYS", "*"]) else {
        panic!("KEYS answered something else");
    };
    let mut keys: Vec<String> = keys
        .into_iter()
        .map(|k| match k {
            redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "concerto:app%3Aa:hm:store:data",
            "concerto:app%3Aa:hm:store:order",
            "concerto:app%3Aa:hm:store:seq",
            "concerto:app%3Aa:lg:facts:keys",
            "concerto:app%3Aa:lg:facts:order",
            "concerto:app%3Aa:lg:facts:seq",
            "concerto:app%3Aa:lg:facts:value",
            "concerto:app%3Aa:mem:chat",
            "concerto:app:hm:store:data",
            "concerto:app:hm:store:order",
            "concerto:app:hm:store:seq",
        ]
    );
    assert_eq!(a.change_channel(), "concerto:app%3Aa:changes");
    // Stored values are the codec's JSON text.
    let stored = raw_command(&server.url(), &["HGET", "concerto:app:hm:store:data", "k"]);
    assert_eq!(stored, redis::Value::BulkString(b"2".to_vec()));
}

#[test]
fn unknown_hashmaps_and_bad_settings_are_errors() {
    let server = RedisServer::start();
    let store = connect(&server, "errors");
    let err = wait(store.hashmap_set(MapId(5), s("k"), Value::Int(1))).unwrap_err();
    assert!(
        err.message.contains("hashmap #5 does not exist"),
        "{}",
        err.message
    );
    assert!(wait(store.hashmap_get(MapId(2), "k")).is_err());
    assert!(wait(store.hashmap_entries(MapId(9))).is_err());
    assert!(
        store
            .on_change(7, Arc::new(|_: &HashMapChange| {}))
            .is_err()
    );
    assert_eq!(store.hashmap_name(1), Some("other"));
    assert_eq!(store.hashmap_count(), 2);

    let err = RedisStore::connect(&server.url(), "", names()).unwrap_err();
    assert!(
        err.message.contains("program key is empty"),
        "{}",
        err.message
    );
    let err = RedisStore::connect("http://nope", "p", names()).unwrap_err();
    assert!(err.message.contains("invalid URL"), "{}", err.message);

    // Unnamed hashmaps are called `#index`.
    let unnamed = RedisStore::connect(&server.url(), "errors", vec![String::new()]).unwrap();
    assert_eq!(unnamed.hashmap_name(0), Some("#0"));
}

#[test]
fn unreachable_servers_fail_fast_without_showing_credentials() {
    let port = crate::common::free_port();
    let url = format!("redis://alice:s3cr3t-pw@127.0.0.1:{port}/0");
    let started = Instant::now();
    let err = RedisStore::connect(&url, "p", names()).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!err.message.contains("s3cr3t-pw"), "{}", err.message);
    assert!(!err.message.contains("alice"), "{}", err.message);
    assert!(
        err.message.contains(&format!("127.0.0.1:{port}")),
        "{}",
        err.message
    );
    assert!(err.message.contains("cannot connect"), "{}", err.message);
}

#[test]
fn wrong_passwords_are_reported_without_the_password() {
    let server = RedisServer::start_with(&["--requirepass", "right-password"]);
    let url = |pw: &str| format!("redis://:{pw}@127.0.0.1:{}/0", server.port);
    let err = RedisStore::connect(&url("wrong-password"), "p", names()).unwrap_err();
    assert!(!err.message.contains("wrong-password"), "{}", err.message);
    assert!(err.message.contains("***@127.0.0.1"), "{}", err.message);

    let store = RedisStore::connect(&url("right-password"), "p", names()).unwrap();
    assert!(!format!("{store:?}").contains("right-password"));
    assert!(!store.url().contains("right-password"));
    wait(store.hashmap_set(MapId(0), s("k"), Value::Int(1))).unwrap();
    assert_eq!(wait(store.hashmap_len(MapId(0))).unwrap(), 1);
}

/// Collects every change a listener sees.
fn recorder() -> (
    Arc<Mutex<Vec<HashMapChange>>>,
    concerto_memory::ChangeListener,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    (
        seen,
        Arc::new(move |c: &HashMapChange| sink.lock().push(c.clone())),
    )
}

type Change = (
    u32,
    String,
    String,
    Option<serde_json::Value>,
    Option<serde_json::Value>,
);

fn view(changes: &[HashMapChange]) -> Vec<Change> {
    changes
        .iter()
        .map(|c| {
            (
                c.map,
                c.name.clone(),
                c.key.to_string(),
                c.old.as_ref().map(enc),
                c.new.as_ref().map(enc),
            )
        })
        .collect()
}

#[test]
fn change_events_reach_listeners_with_old_and_new_values() {
    let server = RedisServer::start();
    let writer = connect(&server, "events");
    let listener = connect(&server, "events");
    let (own, own_listener) = recorder();
    let (all, all_listener) = recorder();
    let (only_other, other_listener) = recorder();
    // The writer's own listeners see its writes too.
    writer.on_any_change(own_listener).unwrap();
    listener.on_any_change(all_listener).unwrap();
    listener.on_change(1, other_listener).unwrap();

    wait(writer.hashmap_set(MapId(0), s("a"), Value::Int(1))).unwrap();
    wait(writer.hashmap_replace(MapId(0), s("a"), Value::Nil)).unwrap();
    wait(writer.hashmap_set_many(
        MapId(0),
        vec![(s("b"), Value::Int(2)), (s("a"), Value::Int(3))],
    ))
    .unwrap();
    wait(writer.hashmap_delete(MapId(0), "b")).unwrap();
    // Deleting a missing key changes nothing and reports nothing.
    wait(writer.hashmap_delete(MapId(0), "b")).unwrap();
    wait(writer.hashmap_set(MapId(1), s("x:y/\"z"), Value::some(Value::Int(4)))).unwrap();
    wait(writer.hashmap_set(MapId(0), s("c"), Value::Int(5))).unwrap();
    wait(writer.hashmap_clear(MapId(0))).unwrap();

    let i = |n: i64| Some(enc(&Value::Int(n)));
    let expected: Vec<Change> = vec![
        (0, "store".into(), "a".into(), None, i(1)),
        (0, "store".into(), "a".into(), i(1), Some(enc(&Value::Nil))),
        (0, "store".into(), "b".into(), None, i(2)),
        (0, "store".into(), "a".into(), Some(enc(&Value::Nil)), i(3)),
        (0, "store".into(), "b".into(), i(2), None),
        (
            1,
            "other".into(),
            "x:y/\"z".into(),
            None,
            Some(enc(&Value::some(Value::Int(4)))),
        ),
        (0, "store".into(), "c".into(), None, i(5)),
        (0, "store".into(), "a".into(), i(3), None),
        (0, "store".into(), "c".into(), i(5), None),
    ];
    for seen in [&own, &all] {
        assert!(
            eventually(Duration::from_secs(10), || seen.lock().len()
                >= expected.len()),
            "only {} of {} changes arrived",
            seen.lock().len(),
            expected.len()
        );
    }
    // Nothing more arrives.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(view(&own.lock()), expected);
    assert_eq!(view(&all.lock()), expected);
    assert_eq!(view(&only_other.lock()), expected[5..6].to_vec());
    assert_eq!(listener.malformed_events(), 0);

    // A panicking listener does not stop the others.
    listener
        .on_any_change(Arc::new(|_: &HashMapChange| panic!("listener failure")))
        .unwrap();
    let before = all.lock().len();
    wait(writer.hashmap_set(MapId(0), s("after"), Value::Int(6))).unwrap();
    assert!(eventually(Duration::from_secs(10), || all.lock().len() == before + 1));
}

#[test]
fn an_outage_fails_operations_by_name_and_the_store_recovers() {
    let mut server = RedisServer::start();
    let options = RedisOptions {
        connection_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(2),
        reconnect_attempts: 2,
    };
    let store = RedisStore::connect_with(&server.url(), "outage", names(), options).unwrap();
    let (seen, listener) = recorder();
    store.on_any_change(listener).unwrap();
    wait(store.hashmap_set(MapId(0), s("before"), Value::Int(1))).unwrap();

    server.stop();
    let err = wait(store.hashmap_set(MapId(0), s("during"), Value::Int(2))).unwrap_err();
    assert!(
        err.message.contains("hashmap 'store': set of key 'during'"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains(&format!("127.0.0.1:{}", server.port)),
        "{}",
        err.message
    );
    let err = wait(store.ledger_entries("facts")).unwrap_err();
    assert!(err.message.contains("ledger 'facts'"), "{}", err.message);

    // A new (empty) server on the same port: the store reconnects by itself, and so does
    // its subscriber.
    server.restart();
    assert!(
        eventually(Duration::from_secs(15), || wait(store.hashmap_set(
            MapId(0),
            s("after"),
            Value::Int(3)
        ))
        .is_ok()),
        "the store did not reconnect"
    );
    assert!(
        eventually(Duration::from_secs(15), || {
            let _ = wait(store.hashmap_set(MapId(0), s("ping"), Value::Int(4)));
            seen.lock().iter().any(|c| c.key.as_str() == "ping")
        }),
        "change events did not resume"
    );
    assert!(seen.lock().iter().any(|c| c.key.as_str() == "before"));
}

fn pending<T>(reply: Reply<T>) -> concerto_vm::host::BoxFuture<T> {
    match reply {
        Reply::Pending(f) => f,
        Reply::Ready(_) => panic!("expected a pending reply"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn works_inside_a_current_thread_runtime_and_drops_there() {
    let server = RedisServer::start();
    let store = RedisStore::connect_async(&server.url(), "async", names(), RedisOptions::default())
        .await
        .unwrap();
    // Many operations in flight at once on one thread.
    let writes: Vec<_> = (0..100)
        .map(|i| pending(store.hashmap_set(MapId(0), s(&format!("k{i}")), Value::Int(i))))
        .collect();
    for w in writes {
        w.await.unwrap();
    }
    assert_eq!(pending(store.hashmap_len(MapId(0))).await.unwrap(), 100);
    // The blocking setup calls work here too (they wait on the store's own runtime).
    let other = connect(&server, "async");
    let (seen, listener) = recorder();
    other.on_any_change(listener).unwrap();
    pending(store.hashmap_set(MapId(0), s("seen"), Value::Int(1)))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().is_empty() {
        assert!(Instant::now() < deadline, "no change event arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(other);
    // A reply outlives the store that made it.
    let late = pending(store.hashmap_len(MapId(0)));
    drop(store);
    assert_eq!(late.await.unwrap(), 101);
}

#[test]
fn replies_complete_without_any_runtime() {
    // `block_on` in these tests is a bare thread-parking executor: no tokio context.
    let server = RedisServer::start();
    let store = connect(&server, "bare");
    block_on(pending(store.hashmap_set(MapId(0), s("k"), Value::Int(1)))).unwrap();
    assert!(block_on(pending(store.hashmap_has(MapId(0), "k"))).unwrap());
    // Errors found before anything is sent answer at once.
    match store.hashmap_set(MapId(0), s("x"), Value::Builtin(0)) {
        Reply::Ready(Err(e)) => assert_eq!(e.kind, HostErrorKind::Failed),
        _ => panic!("expected an immediate error"),
    }
}
