//! Hashmaps through the facade: persistence across runs, the memory limit, host change
//! listeners (`tests/memory/*.conc`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use concerto_runtime::{Limits, Runtime, RuntimeConfig, RuntimeError, SetupError, Value};
use parking_lot::Mutex;
use serde_json::json;

fn program(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("memory")
        .join(format!("{name}.conc-ir"))
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("concerto-memory-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Emits of one run as (channel, payload), and the uncaught error.
type Emits = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

fn recorded(rt: &mut Runtime) -> Emits {
    let emits: Emits = Arc::default();
    let sink = emits.clone();
    rt.on_prefix("", move |channel, payload| {
        sink.lock().push((channel.to_string(), payload.to_json()))
    });
    emits
}

fn block_on<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio")
        .block_on(fut)
}

/// One run of `counter` in a fresh runtime, the hashmap kept in `file`.
fn counter_run(file: &Path) -> Result<Vec<(String, serde_json::Value)>, String> {
    let mut rt = Runtime::builder()
        .persist_hashmap("counts", file)
        .build()
        .map_err(|e| e.to_string())?;
    let emits = recorded(&mut rt);
    rt.load_ir(program("counter")).map_err(|e| e.to_string())?;
    block_on(rt.execute()).map_err(|e| e.to_string())?;
    let out = emits.lock().clone();
    Ok(out)
}

#[test]
fn a_persisted_hashmap_survives_from_one_runtime_to_the_next() {
    let dir = temp_dir("persist");
    let file = dir.join("counts.json");
    for expected in 1..=3 {
        let out = counter_run(&file).expect("run");
        assert_eq!(out[0], ("runs".to_string(), json!(expected)));
    }
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("file")).expect("json");
    assert_eq!(saved, json!({"runs": 3, "last": 30}));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_corrupt_persistence_file_is_an_error_not_an_empty_start() {
    let dir = temp_dir("corrupt");
    let file = dir.join("counts.json");
    std::fs::write(&file, "{\"runs\": 4, \"last\"").expect("write");
    let error = counter_run(&file).expect_err("a corrupt file is refused");
    assert!(error.contains("counts.json"), "{error}");
    // The file is left as it was for the user to inspect.
    assert_eq!(
        std::fs::read_to_string(&file).expect("file"),
        "{\"runs\": 4, \"last\""
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn persisting_an_unknown_hashmap_names_it_when_the_program_loads() {
    let mut rt = Runtime::builder()
        .persist_hashmap("nope", temp_dir("unknown").join("x.json"))
        .build()
        .expect("builds");
    let error = rt.load_ir(program("counter")).expect_err("unknown");
    assert!(
        matches!(&error, RuntimeError::Setup(SetupError::UnknownHashmap(n)) if n == "nope"),
        "{error}"
    );
    assert!(error.to_string().contains("`nope`"), "{error}");
    assert!(
        rt.program().is_none(),
        "a program that failed to load is not kept"
    );
}

#[test]
fn persistence_or_a_byte_limit_with_a_store_that_cannot_honour_them_is_refused_at_build() {
    let db = temp_dir("refused").join("state.db");
    let sqlite = || concerto_runtime::StateStore::Sqlite(db.clone());
    let persisted = Runtime::builder()
        .state_store(sqlite())
        .persist_hashmap("counts", "counts.json")
        .build();
    assert!(
        matches!(
            persisted,
            Err(RuntimeError::Setup(SetupError::NeedsBuiltinStore { .. }))
        ),
        "{:?}",
        persisted.err()
    );
    let limited = Runtime::builder()
        .limits(Limits::default().with_max_hashmap_bytes(Some(1000)))
        .state_store(sqlite())
        .build();
    assert!(
        matches!(
            limited,
            Err(RuntimeError::Setup(SetupError::HashmapLimitNotEnforced))
        ),
        "{:?}",
        limited.err()
    );
    // Nothing was opened: the refusal comes before any store exists.
    assert!(!db.exists());
}

#[test]
fn the_memory_limit_stops_the_program_with_a_clear_error_and_keeps_what_was_emitted() {
    let mut rt = Runtime::builder()
        .limits(Limits::default().with_max_hashmap_bytes(Some(50_000)))
        .build()
        .expect("builds");
    let emits = recorded(&mut rt);
    rt.load_ir(program("fill")).expect("load");
    let error = block_on(rt.execute())
        .expect_err("the limit stops it")
        .to_string();
    assert!(error.contains("hashmap 'big'"), "{error}");
    assert!(error.contains("50000"), "{error}");
    assert!(error.contains("max_hashmap_bytes"), "{error}");
    let out = emits.lock().clone();
    assert!(out.iter().all(|(c, _)| c == "written"), "{out:?}");
    assert_eq!(out.last().map(|(_, p)| p.clone()), Some(json!(40)));
    // Nothing past the limit was written; the estimate stays under it.
    assert!(
        rt.hashmap_bytes_used() <= 50_000,
        "{}",
        rt.hashmap_bytes_used()
    );
}

#[test]
fn without_a_limit_the_same_program_completes() {
    let mut rt = Runtime::new(RuntimeConfig::default());
    let emits = recorded(&mut rt);
    rt.load_ir(program("fill")).expect("load");
    block_on(rt.execute()).expect("run");
    assert_eq!(
        emits.lock().last().cloned(),
        Some(("done".to_string(), json!(1000)))
    );
}

#[test]
fn host_listeners_see_every_change_with_old_and_new_values() {
    let mut rt = Runtime::new(RuntimeConfig::default());
    let changes = Arc::new(Mutex::new(Vec::new()));
    let log = changes.clone();
    // Registered before the program loads: attached to the store of each program loaded.
    rt.on_hashmap_change("counts", move |key, old, new| {
        let show = |v: Option<Value>| v.map_or(json!(null), |v| v.to_json());
        log.lock().push(json!([key, show(old), show(new)]));
    })
    .expect("listener");
    rt.load_ir(program("counter")).expect("load");
    block_on(rt.execute()).expect("first run");
    block_on(rt.execute()).expect("second run (same store)");
    assert_eq!(
        changes.lock().clone(),
        vec![
            json!(["runs", null, 1]),
            json!(["last", null, 10]),
            json!(["runs", 1, 2]),
            json!(["last", 10, 20]),
        ]
    );
}

/// Every hashmap, ledger and memory case of `tests/cases` gives the same emits on the SQLite
/// store (whose every operation answers later) as expected.
#[test]
fn the_hashmap_ledger_and_memory_cases_pass_on_the_sqlite_store() {
    let dir = temp_dir("sqlite-cases");
    let mut checked = 0;
    for feature in ["hashmaps", "ledgers", "memories"] {
        let cases = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("cases")
            .join(feature);
        for ir in concerto_tests::ir_files(&cases) {
            let expected_path = ir.with_extension("").with_extension("expected.jsonl");
            let Ok(expected) = std::fs::read_to_string(&expected_path) else {
                continue;
            };
            let expected: Vec<serde_json::Value> = expected
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).expect("expected line"))
                .collect();
            let db = dir.join(format!("case{checked}.db"));
            let mut rt = Runtime::builder()
                .state_store(concerto_runtime::StateStore::Sqlite(db))
                .build()
                .expect("builds");
            let emits = recorded(&mut rt);
            rt.load_ir(&ir).expect("load");
            let _ = block_on(rt.execute());
            let got: Vec<serde_json::Value> = emits
                .lock()
                .iter()
                .map(|(c, p)| json!({"channel": c, "payload": p}))
                .collect();
            assert_eq!(got, expected, "{}", ir.display());
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked} cases");
    let _ = std::fs::remove_dir_all(dir);
}

/// The in-memory store, counting how often every entry of a hashmap is read, and (when
/// `versioned` is false) hiding its change counter, as a store that cannot tell would.
struct CountingStore {
    inner: concerto_memory::InMemoryStore,
    versioned: bool,
    entry_reads: std::sync::atomic::AtomicUsize,
}

mod counting {
    use super::CountingStore;
    use concerto_vm::host::{
        ChatMessage, ConversationStore, HashmapStore, HostError, JournalStore, LedgerEntry,
        LedgerQuery, LedgerStore, MapId, Reply,
    };
    use concerto_vm::{Str, Value};
    use std::sync::atomic::Ordering;

    type R<T> = Reply<Result<T, HostError>>;

    fn no<T>() -> R<T> {
        Reply::Ready(Err(HostError::unsupported("not in this test")))
    }

    impl HashmapStore for CountingStore {
        fn hashmap_set(&self, map: MapId, key: Str, value: Value) -> R<()> {
            self.inner.hashmap_set(map, key, value)
        }
        fn hashmap_get(&self, map: MapId, key: &str) -> R<Option<Value>> {
            self.inner.hashmap_get(map, key)
        }
        fn hashmap_has(&self, map: MapId, key: &str) -> R<bool> {
            self.inner.hashmap_has(map, key)
        }
        fn hashmap_delete(&self, map: MapId, key: &str) -> R<bool> {
            self.inner.hashmap_delete(map, key)
        }
        fn hashmap_entries(&self, map: MapId) -> R<Vec<(Str, Value)>> {
            self.entry_reads.fetch_add(1, Ordering::SeqCst);
            self.inner.hashmap_entries(map)
        }
        fn hashmap_version(&self, map: MapId) -> Option<u64> {
            self.versioned
                .then(|| self.inner.hashmap_version(map))
                .flatten()
        }
        fn hashmap_len(&self, map: MapId) -> R<usize> {
            self.inner.hashmap_len(map)
        }
        fn hashmap_clear(&self, map: MapId) -> R<()> {
            self.inner.hashmap_clear(map)
        }
    }

    impl LedgerStore for CountingStore {
        fn ledger_insert(&self, _: &str, _: LedgerEntry) -> R<()> {
            no()
        }
        fn ledger_update(&self, _: &str, _: &str, _: Value) -> R<bool> {
            no()
        }
        fn ledger_update_keys(&self, _: &str, _: &str, _: Vec<String>) -> R<bool> {
            no()
        }
        fn ledger_delete(&self, _: &str, _: &str) -> R<bool> {
            no()
        }
        fn ledger_query(&self, _: &str, _: LedgerQuery) -> R<Vec<LedgerEntry>> {
            no()
        }
        fn ledger_entries(&self, _: &str) -> R<Vec<LedgerEntry>> {
            no()
        }
        fn ledger_clear(&self, _: &str) -> R<()> {
            no()
        }
    }

    impl ConversationStore for CountingStore {
        fn memory_append(&self, _: &str, _: Option<u64>, _: ChatMessage) -> R<()> {
            no()
        }
        fn memory_messages(&self, _: &str) -> R<Vec<ChatMessage>> {
            no()
        }
        fn memory_clear(&self, _: &str) -> R<()> {
            no()
        }
    }

    impl JournalStore for CountingStore {}
}

/// Runs `iterate` on a counting store: the emits and how often the entries were read.
fn iterate_on(versioned: bool) -> (Vec<(String, serde_json::Value)>, usize) {
    let store = Arc::new(CountingStore {
        inner: concerto_memory::InMemoryStore::with_names(["scores"]),
        versioned,
        entry_reads: Default::default(),
    });
    let mut rt = Runtime::builder()
        .memory_store(store.clone())
        .build()
        .expect("builds");
    let emits = recorded(&mut rt);
    rt.load_ir(program("iterate")).expect("load");
    block_on(rt.execute()).expect("run");
    let out = emits.lock().clone();
    (
        out,
        store.entry_reads.load(std::sync::atomic::Ordering::SeqCst),
    )
}

#[test]
fn walking_a_hashmap_reads_its_entries_once_per_change_not_once_per_index() {
    let expected = vec![
        ("walk".to_string(), json!([3000, 4_498_500])),
        // k1 was changed and `extra` added at k0: both seen by the rest of the walk.
        (
            "changed".to_string(),
            json!(1_000_000 + (4_498_500 - 1) + 7),
        ),
    ];
    let (emits, reads) = iterate_on(true);
    assert_eq!(emits, expected);
    // One read for the first walk, which the second walk goes on using (nothing changed in
    // between), and one more after the two changes made at k0.
    assert_eq!(reads, 2, "entries read {reads} times");
    // A store that cannot tell when a hashmap changed: the same answers, one read per index.
    let (emits, reads) = iterate_on(false);
    assert_eq!(emits, expected);
    assert_eq!(reads, 3000 + 3001, "entries read {reads} times");
}
