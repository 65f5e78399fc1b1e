//! `JournalStore::apply` on the Redis store against a real `redis-server` (started by each
//! test on a free loopback port): the writes and the journal record commit together or not
//! at all, as another connection sees.

use concerto_store_redis::RedisStore;
use concerto_vm::host::{
    ChatMessage, ConversationStore, HashmapStore, JournalRecord, JournalStore, LedgerEntry,
    LedgerStore, Write,
};
use concerto_vm::{Str, Value};

use crate::common::{RedisServer, wait};

fn open(server: &RedisServer) -> RedisStore {
    RedisStore::connect(
        &server.url(),
        "batch",
        vec!["store".to_string(), "other".to_string()],
    )
    .expect("connect")
}

fn batch(last: Option<Write>) -> Vec<Write> {
    let mut writes = vec![
        Write::HashmapSet {
            map: 0,
            key: Str::from("a"),
            value: Value::Int(1),
        },
        Write::HashmapDelete {
            map: 1,
            key: Str::from("old"),
        },
        Write::LedgerInsert {
            ledger: "facts".into(),
            entry: LedgerEntry {
                identifier: "sky".into(),
                keys: vec!["colour".into()],
                value: Value::Int(1),
            },
        },
        Write::MemoryAppend {
            memory: "chat".into(),
            max_messages: Some(5),
            message: ChatMessage::new("user", "hello"),
        },
    ];
    writes.extend(last);
    writes
}

fn record() -> JournalRecord {
    JournalRecord {
        run: "run-1".into(),
        record: r#"{"op":"agent"}"#.into(),
    }
}

#[test]
fn a_batch_with_a_failing_write_leaves_neither_the_writes_nor_the_record() {
    let server = RedisServer::start();
    let store = open(&server);
    wait(store.hashmap_set(1, Str::from("old"), Value::Int(0))).unwrap();
    let unknown = Write::HashmapSet {
        map: 9,
        key: Str::from("b"),
        value: Value::Int(2),
    };
    assert!(wait(store.apply(batch(Some(unknown)), Some(record()))).is_err());
    let store = open(&server);
    assert_eq!(wait(store.hashmap_get(0, "a")).unwrap(), None);
    assert_eq!(
        wait(store.hashmap_get(1, "old")).unwrap(),
        Some(Value::Int(0))
    );
    assert!(wait(store.ledger_entries("facts")).unwrap().is_empty());
    assert!(wait(store.memory_messages("chat")).unwrap().is_empty());
    assert!(wait(store.journal_records("run-1")).unwrap().is_empty());
}

#[test]
fn a_good_batch_lands_with_its_journal_record() {
    let server = RedisServer::start();
    let store = open(&server);
    wait(store.hashmap_set(1, Str::from("old"), Value::Int(0))).unwrap();
    wait(store.apply(batch(None), Some(record()))).unwrap();
    let store = open(&server);
    assert_eq!(
        wait(store.hashmap_get(0, "a")).unwrap(),
        Some(Value::Int(1))
    );
    assert_eq!(wait(store.hashmap_get(1, "old")).unwrap(), None);
    assert_eq!(wait(store.ledger_entries("facts")).unwrap().len(), 1);
    assert_eq!(wait(store.memory_messages("chat")).unwrap().len(), 1);
    assert_eq!(
        wait(store.journal_records("run-1")).unwrap(),
        vec![record().record]
    );
}
