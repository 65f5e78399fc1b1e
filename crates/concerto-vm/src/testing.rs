//! In-memory fakes of the host traits, for tests, examples and doc tests of the VM alone.
//!
//! These fakes are deliberately small: they record emits and printed text, keep hashmaps in
//! a mutex-protected map, and report every other outside-world operation as unsupported.
//! The real implementations live in the sibling crates and are wired by `concerto-runtime`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use parking_lot::Mutex;

use crate::exec::Host;
use crate::host::*;
use crate::value::{Str, Value};

/// Records every emit as `(channel, payload)`.
#[derive(Default)]
pub struct RecordingEmits {
    /// The emits so far.
    pub emits: Mutex<Vec<(String, Value)>>,
}

impl EmitSink for RecordingEmits {
    fn emit(&self, channel: &str, payload: &Value) -> Result<(), HostError> {
        self.emits
            .lock()
            .push((channel.to_string(), payload.clone()));
        Ok(())
    }
}

/// Answers every operation with "unsupported".
pub struct Unsupported;

impl Connections for Unsupported {
    fn chat(
        &self,
        _: &Arc<concerto_ir::Program>,
        _: ConnectionId,
        _: ChatRequest,
    ) -> BoxFuture<Result<ChatResponse, HostError>> {
        Box::pin(async { Err(HostError::unsupported("LLM connections in the test host")) })
    }
}

impl ToolHost for Unsupported {
    fn check(&self, _: &concerto_ir::Program, _: &str, _: &str) -> Result<(), HostError> {
        Ok(())
    }

    fn is_registered(&self, _: &str) -> bool {
        false
    }

    fn is_switched_off(&self, _: &str) -> bool {
        false
    }

    fn specs(
        &self,
        _: &Arc<concerto_ir::Program>,
        tool: &str,
    ) -> BoxFuture<Result<Vec<crate::host::ToolSpec>, HostError>> {
        let msg = format!("tools of `{tool}` in the test host");
        Box::pin(async move { Err(HostError::unsupported(msg)) })
    }

    fn call(
        &self,
        _: &Arc<concerto_ir::Program>,
        tool: &str,
        method: &str,
        _: serde_json::Value,
    ) -> BoxFuture<Result<Value, HostError>> {
        let msg = format!("host tool `{tool}.{method}` in the test host");
        Box::pin(async move { Err(HostError::unsupported(msg)) })
    }

    fn host_exchange(
        &self,
        _: &Arc<concerto_ir::Program>,
        _: u32,
        _: String,
    ) -> BoxFuture<Result<String, HostError>> {
        Box::pin(async { Err(HostError::unsupported("host agents in the test host")) })
    }

    fn host_listen(
        &self,
        _: &Arc<concerto_ir::Program>,
        _: u32,
        _: String,
    ) -> BoxFuture<Result<Arc<dyn crate::host::HostSession>, HostError>> {
        Box::pin(async { Err(HostError::unsupported("listen in the test host")) })
    }

    fn fs(&self, _: FsRequest) -> BoxFuture<Result<FsReply, OutsideError>> {
        Box::pin(async { Err(HostError::unsupported("std::fs in the test host").into()) })
    }

    fn http(&self, _: HttpRequest) -> BoxFuture<Result<HttpReply, OutsideError>> {
        Box::pin(async { Err(HostError::unsupported("std::http in the test host").into()) })
    }
}

impl SchemaValidator for Unsupported {
    fn provider_schema(
        &self,
        _: &concerto_ir::Program,
        _: SchemaId,
    ) -> Result<serde_json::Value, HostError> {
        Err(HostError::unsupported("schema validation in the test host"))
    }

    fn check(
        &self,
        _: &concerto_ir::Program,
        _: SchemaId,
        _: &str,
    ) -> Result<crate::host::SchemaCheck, HostError> {
        Err(HostError::unsupported("schema validation in the test host"))
    }
}

/// Hashmaps in a mutex-protected map; ledgers and memories unsupported.
#[derive(Default)]
pub struct FakeMemory {
    maps: Mutex<HashMap<MapId, Vec<(Str, Value)>>>,
}

/// Sets `key` in `entries`, keeping its place when present.
fn set_entry(entries: &mut Vec<(Str, Value)>, key: Str, value: Value) {
    match entries.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => entries.push((key, value)),
    }
}

fn unsupported<T>(what: &str) -> Reply<Result<T, HostError>> {
    Reply::Ready(Err(HostError::unsupported(format!(
        "{what} in the test host"
    ))))
}

impl HashmapStore for FakeMemory {
    fn hashmap_set(&self, map: MapId, key: Str, value: Value) -> Reply<Result<(), HostError>> {
        set_entry(self.maps.lock().entry(map).or_default(), key, value);
        Reply::Ready(Ok(()))
    }
    fn hashmap_get(&self, map: MapId, key: &str) -> Reply<Result<Option<Value>, HostError>> {
        let maps = self.maps.lock();
        let found = maps
            .get(&map)
            .and_then(|e| e.iter().find(|(k, _)| k.as_str() == key));
        Reply::Ready(Ok(found.map(|(_, v)| v.clone())))
    }
    fn hashmap_has(&self, map: MapId, key: &str) -> Reply<Result<bool, HostError>> {
        let maps = self.maps.lock();
        Reply::Ready(Ok(maps
            .get(&map)
            .is_some_and(|e| e.iter().any(|(k, _)| k.as_str() == key))))
    }
    fn hashmap_delete(&self, map: MapId, key: &str) -> Reply<Result<bool, HostError>> {
        let mut maps = self.maps.lock();
        let entries = maps.entry(map).or_default();
        let before = entries.len();
        entries.retain(|(k, _)| k.as_str() != key);
        Reply::Ready(Ok(entries.len() != before))
    }
    fn hashmap_entries(&self, map: MapId) -> Reply<Result<Vec<(Str, Value)>, HostError>> {
        Reply::Ready(Ok(self.maps.lock().get(&map).cloned().unwrap_or_default()))
    }
    fn hashmap_len(&self, map: MapId) -> Reply<Result<usize, HostError>> {
        Reply::Ready(Ok(self.maps.lock().get(&map).map_or(0, Vec::len)))
    }
    fn hashmap_clear(&self, map: MapId) -> Reply<Result<(), HostError>> {
        self.maps.lock().remove(&map);
        Reply::Ready(Ok(()))
    }
}

impl LedgerStore for FakeMemory {
    fn ledger_insert(&self, _: &str, _: LedgerEntry) -> Reply<Result<(), HostError>> {
        unsupported("ledgers")
    }
    fn ledger_update(&self, _: &str, _: &str, _: Value) -> Reply<Result<bool, HostError>> {
        unsupported("ledgers")
    }
    fn ledger_update_keys(
        &self,
        _: &str,
        _: &str,
        _: Vec<String>,
    ) -> Reply<Result<bool, HostError>> {
        unsupported("ledgers")
    }
    fn ledger_delete(&self, _: &str, _: &str) -> Reply<Result<bool, HostError>> {
        unsupported("ledgers")
    }
    fn ledger_query(&self, _: &str, _: LedgerQuery) -> Reply<Result<Vec<LedgerEntry>, HostError>> {
        unsupported("ledgers")
    }
    fn ledger_entries(&self, _: &str) -> Reply<Result<Vec<LedgerEntry>, HostError>> {
        unsupported("ledgers")
    }
    fn ledger_clear(&self, _: &str) -> Reply<Result<(), HostError>> {
        unsupported("ledgers")
    }
}

impl ConversationStore for FakeMemory {
    fn memory_append(
        &self,
        _: &str,
        _: Option<u64>,
        _: ChatMessage,
    ) -> Reply<Result<(), HostError>> {
        unsupported("memories")
    }
    fn memory_messages(&self, _: &str) -> Reply<Result<Vec<ChatMessage>, HostError>> {
        unsupported("memories")
    }
    fn memory_clear(&self, _: &str) -> Reply<Result<(), HostError>> {
        unsupported("memories")
    }
}

/// Keeps no journals; `apply` takes hashmap writes only.
impl JournalStore for FakeMemory {
    /// All or none under the one lock: a batch with a ledger or memory write or a journal
    /// record is refused before anything is written.
    fn apply(
        &self,
        writes: Vec<Write>,
        journal: Option<JournalRecord>,
    ) -> Reply<Result<(), HostError>> {
        if journal.is_some() {
            return unsupported("journals");
        }
        let mut maps = self.maps.lock();
        if writes.iter().any(|w| {
            !matches!(
                w,
                Write::HashmapSet { .. } | Write::HashmapDelete { .. } | Write::HashmapClear { .. }
            )
        }) {
            return unsupported("ledgers and memories");
        }
        for write in writes {
            match write {
                Write::HashmapSet { map, key, value } => {
                    set_entry(maps.entry(map).or_default(), key, value);
                }
                Write::HashmapDelete { map, key } => {
                    if let Some(entries) = maps.get_mut(&map) {
                        entries.retain(|(k, _)| *k != key);
                    }
                }
                Write::HashmapClear { map } => {
                    maps.remove(&map);
                }
                // Refused above.
                _ => {}
            }
        }
        Reply::Ready(Ok(()))
    }
}

/// A deterministic system: printed text is recorded, the clock is fixed, sleeps end at
/// once, randomness is a counter.
#[derive(Default)]
pub struct FakeSystem {
    /// Everything printed.
    pub printed: Mutex<String>,
    /// Environment variables.
    pub env: Mutex<HashMap<String, String>>,
    counter: Mutex<u8>,
}

impl System for FakeSystem {
    fn print(&self, text: &str) {
        self.printed.lock().push_str(text);
    }
    fn log(&self, _: LogLevel, message: &str) {
        self.printed.lock().push_str(message);
    }
    fn env_var(&self, name: &str) -> Option<String> {
        self.env.lock().get(name).cloned()
    }
    fn env_vars(&self) -> Vec<(String, String)> {
        self.env
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
    fn now_ms(&self) -> i64 {
        1_700_000_000_000
    }
    fn sleep(&self, _: Duration) -> BoxFuture<()> {
        Box::pin(async {})
    }
    fn random_bytes(&self, buf: &mut [u8]) {
        let mut c = self.counter.lock();
        for b in buf {
            *c = c.wrapping_add(37);
            *b = *c;
        }
    }
}

/// A host of fakes. Use [`host_with`] to keep handles on the recorders.
pub fn host() -> Host {
    host_with(
        Arc::new(RecordingEmits::default()),
        Arc::new(FakeSystem::default()),
    )
}

/// A host of fakes around the given emit recorder and system.
pub fn host_with(emits: Arc<RecordingEmits>, system: Arc<FakeSystem>) -> Host {
    Host {
        emit: emits,
        connections: Arc::new(Unsupported),
        memory: Arc::new(FakeMemory::default()),
        schema: Arc::new(Unsupported),
        tools: Arc::new(Unsupported),
        system,
        tasks: None,
    }
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on the current thread (for tests and doc examples; real
/// hosts use their async runtime).
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// `reply`'s value, waiting with [`block_on`] when it answers later.
fn wait_reply<T>(reply: Reply<T>) -> T {
    match reply {
        Reply::Ready(v) => v,
        Reply::Pending(fut) => block_on(fut),
    }
}

/// A batch of one write of each kind but clear, and `last`.
pub fn sample_batch(last: Option<Write>) -> Vec<Write> {
    let mut writes = vec![
        Write::HashmapSet {
            map: MapId(0),
            key: Str::from("a"),
            value: Value::Int(1),
        },
        Write::HashmapDelete {
            map: MapId(1),
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

/// The journal record of the `apply` checks.
pub fn sample_record() -> JournalRecord {
    JournalRecord {
        run: "run-1".into(),
        record: r#"{"op":"agent"}"#.into(),
        epoch: None,
    }
}

/// Checks [`JournalStore::apply`] on the durable store `open` opens (again: the second
/// opening must see what the first committed): a batch whose last write names an unknown
/// hashmap fails, and neither its other writes nor its journal record are there.
pub fn a_batch_with_a_failing_write_leaves_neither_the_writes_nor_the_record(
    open: &dyn Fn() -> Arc<dyn MemoryStore>,
) {
    let store = open();
    wait_reply(store.hashmap_set(MapId(1), Str::from("old"), Value::Int(0))).unwrap();
    let unknown = Write::HashmapSet {
        map: MapId(9),
        key: Str::from("b"),
        value: Value::Int(2),
    };
    assert!(wait_reply(store.apply(sample_batch(Some(unknown)), Some(sample_record()))).is_err());
    drop(store);
    let store = open();
    assert_eq!(wait_reply(store.hashmap_get(MapId(0), "a")).unwrap(), None);
    assert_eq!(
        wait_reply(store.hashmap_get(MapId(1), "old")).unwrap(),
        Some(Value::Int(0))
    );
    assert!(
        wait_reply(store.ledger_entries("facts"))
            .unwrap()
            .is_empty()
    );
    assert!(
        wait_reply(store.memory_messages("chat"))
            .unwrap()
            .is_empty()
    );
    assert!(
        wait_reply(store.journal_records("run-1"))
            .unwrap()
            .is_empty()
    );
}

/// Checks [`JournalStore::apply`] on the durable store `open` opens: a good batch and its
/// journal record are there when the store is opened again.
pub fn a_good_batch_lands_with_its_journal_record(open: &dyn Fn() -> Arc<dyn MemoryStore>) {
    let store = open();
    wait_reply(store.hashmap_set(MapId(1), Str::from("old"), Value::Int(0))).unwrap();
    wait_reply(store.apply(sample_batch(None), Some(sample_record()))).unwrap();
    drop(store);
    let store = open();
    assert_eq!(
        wait_reply(store.hashmap_get(MapId(0), "a")).unwrap(),
        Some(Value::Int(1))
    );
    assert_eq!(
        wait_reply(store.hashmap_get(MapId(1), "old")).unwrap(),
        None
    );
    assert_eq!(wait_reply(store.ledger_entries("facts")).unwrap().len(), 1);
    assert_eq!(wait_reply(store.memory_messages("chat")).unwrap().len(), 1);
    assert_eq!(
        wait_reply(store.journal_records("run-1")).unwrap(),
        vec![sample_record().record]
    );
}

/// Checks fencing on the durable store `open` opens: a process at epoch 1 holds run
/// `run-f`; a second takes it over at epoch 2 (raising the fence); the first one's batch,
/// clear included, is refused as [`HostErrorKind::Fenced`]
/// and leaves no write and no record, while the second one's lands; lowering the fence back
/// to 1 is refused; a record without an epoch is not fenced.
pub fn a_batch_of_an_older_epoch_is_refused_and_writes_nothing(
    open: &dyn Fn() -> Arc<dyn MemoryStore>,
) {
    use crate::host::HostErrorKind;
    let record = |epoch: u64, text: &str| JournalRecord {
        run: "run-f".into(),
        record: text.into(),
        epoch: Some(epoch),
    };
    let set = |key: &str, v: i64| Write::HashmapSet {
        map: MapId(0),
        key: Str::from(key),
        value: Value::Int(v),
    };
    let first = open();
    let second = open();
    wait_reply(first.journal_fence("run-f", 1)).unwrap();
    wait_reply(first.apply(vec![set("k", 1)], Some(record(1, "a")))).unwrap();
    // An epoch the fence does not stand at yet is refused too (raise first).
    let early = wait_reply(first.apply(vec![set("k", 9)], Some(record(3, "x")))).unwrap_err();
    assert_eq!(early.kind, HostErrorKind::Fenced, "{early}");
    wait_reply(second.journal_fence("run-f", 2)).unwrap();
    for batch in [
        vec![set("k", 5), set("other", 5)],
        vec![Write::HashmapClear { map: MapId(0) }],
        vec![Write::LedgerClear {
            ledger: "facts".into(),
        }],
        Vec::new(),
    ] {
        let err = wait_reply(first.apply(batch, Some(record(1, "stale")))).unwrap_err();
        assert_eq!(err.kind, HostErrorKind::Fenced, "{err}");
        assert!(err.message.contains("run-f"), "{err}");
    }
    let lower = wait_reply(first.journal_fence("run-f", 1)).unwrap_err();
    assert_eq!(lower.kind, HostErrorKind::Fenced, "{lower}");
    wait_reply(second.apply(vec![set("k", 2)], Some(record(2, "b")))).unwrap();
    wait_reply(second.apply(Vec::new(), Some(record(2, "c")))).unwrap();
    drop((first, second));
    let store = open();
    assert_eq!(
        wait_reply(store.hashmap_get(MapId(0), "k")).unwrap(),
        Some(Value::Int(2))
    );
    assert_eq!(
        wait_reply(store.hashmap_get(MapId(0), "other")).unwrap(),
        None
    );
    assert_eq!(
        wait_reply(store.journal_records("run-f")).unwrap(),
        vec!["a".to_string(), "b".to_string(), "c".to_string()]
    );
    // Unfenced records of another run are not affected.
    let mut plain = sample_record();
    plain.run = "run-g".into();
    wait_reply(store.apply(Vec::new(), Some(plain))).unwrap();
}
