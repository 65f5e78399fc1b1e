//! Hashmap files: round trips, errors, atomic replacement, concurrent and on-change saves.

use concerto_vm::host::MapId;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::ready;
use concerto_memory::{InMemoryStore, PersistMode, temp_files};
use concerto_vm::host::{HashmapStore, HostErrorKind};
use concerto_vm::{EnumObj, Str, Value};
use parking_lot::Mutex;

fn s(text: &str) -> Str {
    Str::from(text)
}

fn entries(store: &InMemoryStore, map: u32) -> Vec<(Str, Value)> {
    ready(store.hashmap_entries(MapId(map))).unwrap()
}

fn variant(
    type_name: &str,
    variant: &str,
    ids: (u32, u32),
    field_names: Option<Vec<&str>>,
    payload: Vec<Value>,
) -> Value {
    Value::Enum(Arc::new(EnumObj {
        type_name: type_name.into(),
        variant: variant.into(),
        type_id: ids.0,
        variant_id: ids.1,
        field_names: field_names.map(|n| n.into_iter().map(Into::into).collect()),
        payload,
    }))
}

/// One value of every kind that can be stored, nested kinds included.
fn every_kind() -> Vec<(&'static str, Value)> {
    vec![
        ("nil", Value::Nil),
        ("true", Value::Bool(true)),
        ("int", Value::Int(-42)),
        ("int_max", Value::Int(i64::MAX)),
        ("float", Value::Float(2.5)),
        ("float_whole", Value::Float(2.0)),
        ("float_neg_zero", Value::Float(-0.0)),
        ("nan", Value::Float(f64::NAN)),
        ("inf", Value::Float(f64::INFINITY)),
        ("neg_inf", Value::Float(f64::NEG_INFINITY)),
        ("string", Value::str("héllo \"quoted\"\n\u{1F600}")),
        ("empty_string", Value::str("")),
        (
            "array",
            Value::array(vec![Value::Int(1), Value::str("two"), Value::Nil]),
        ),
        ("empty_array", Value::array(vec![])),
        (
            "map",
            Value::map([("z", Value::Int(1)), ("a", Value::Float(1.5))]),
        ),
        ("empty_map", Value::map(Vec::<(&str, Value)>::new())),
        (
            "dollar_map",
            Value::map([("$some", Value::Int(1)), ("$struct", Value::Int(2))]),
        ),
        (
            "struct",
            Value::record(
                "Point",
                vec![("x", Value::Int(1)), ("y", Value::Float(2.0))],
            ),
        ),
        ("some", Value::some(Value::str("inner"))),
        ("none", Value::None),
        ("ok", Value::ok(Value::Int(1))),
        ("err", Value::err(Value::str("bad"))),
        (
            "unit_variant",
            variant("Color", "Red", (3, 0), None, vec![]),
        ),
        (
            "tuple_variant",
            variant(
                "Shape",
                "Rect",
                (4, 1),
                None,
                vec![Value::Int(2), Value::Float(3.0)],
            ),
        ),
        (
            "struct_variant",
            variant(
                "Shape",
                "Circle",
                (4, 2),
                Some(vec!["radius"]),
                vec![Value::Float(1.0)],
            ),
        ),
        (
            "nested",
            Value::array(vec![
                Value::some(Value::record(
                    "Wrap",
                    vec![("inner", Value::ok(Value::map([("n", Value::None)])))],
                )),
                Value::err(variant("E", "V", (0, 0), None, vec![Value::Nil])),
            ]),
        ),
    ]
}

/// Equality that also tells Int from Float, NaN from anything, and type names apart.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => {
            (x.is_nan() && y.is_nan()) || (x == y && x.is_sign_negative() == y.is_sign_negative())
        }
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            let (x, y) = (x.to_vec(), y.to_vec());
            x.len() == y.len() && x.iter().zip(&y).all(|(a, b)| same(a, b))
        }
        (Value::Map(x), Value::Map(y)) => {
            let (x, y) = (x.entries(), y.entries());
            x.len() == y.len()
                && x.iter()
                    .zip(&y)
                    .all(|((ka, a), (kb, b))| ka == kb && same(a, b))
        }
        (Value::Struct(x), Value::Struct(y)) => {
            let (fx, fy) = (x.fields.lock().clone(), y.fields.lock().clone());
            x.ty.name == y.ty.name
                && x.ty.fields == y.ty.fields
                && fx.len() == fy.len()
                && fx.iter().zip(&fy).all(|(a, b)| same(a, b))
        }
        (Value::Enum(x), Value::Enum(y)) => {
            x.type_name == y.type_name
                && x.variant == y.variant
                && x.type_id == y.type_id
                && x.variant_id == y.variant_id
                && x.field_names == y.field_names
                && x.payload.len() == y.payload.len()
                && x.payload.iter().zip(&y.payload).all(|(a, b)| same(a, b))
        }
        (Value::Ok(x), Value::Ok(y))
        | (Value::Err(x), Value::Err(y))
        | (Value::Some(x), Value::Some(y)) => same(x, y),
        (Value::Int(_), _) | (_, Value::Int(_)) | (Value::Float(_), _) | (_, Value::Float(_)) => {
            false
        }
        _ => a.type_name() == b.type_name() && a == b,
    }
}

#[test]
fn every_value_kind_survives_a_save_and_a_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.json");
    let store = InMemoryStore::with_names(["all"]);
    store.persist(0, &path).unwrap();
    let kinds = every_kind();
    for (k, v) in &kinds {
        ready(store.hashmap_set(MapId(0), s(k), v.clone())).unwrap();
    }
    store.save(0).unwrap();

    let again = InMemoryStore::with_names(["all"]);
    again.persist(0, &path).unwrap();
    let loaded = entries(&again, 0);
    assert_eq!(loaded.len(), kinds.len());
    for ((k, v), (lk, lv)) in kinds.iter().zip(&loaded) {
        assert_eq!(*k, lk.as_str(), "insertion order is kept");
        assert!(same(v, lv), "{k}: saved {v:?}, loaded {lv:?}");
    }
    assert_eq!(again.bytes_used(), store.bytes_used());
    assert!(temp_files(&path).is_empty());
}

#[test]
fn a_plain_json_file_written_by_hand_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hand.json");
    fs::write(
        &path,
        r#"{
  "name": "Ada",
  "age": 36,
  "score": 9.5,
  "tags": ["a", "b"],
  "profile": {"city": "London", "$note": "a dollar key that is not first"},
  "missing": null
}"#,
    )
    .unwrap();
    let store = InMemoryStore::new(1);
    store.persist(0, &path).unwrap();
    let got = entries(&store, 0);
    let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["name", "age", "score", "tags", "profile", "missing"]);
    assert!(matches!(got[1].1, Value::Int(36)));
    assert!(matches!(got[2].1, Value::Float(f) if f == 9.5));
    assert_eq!(
        got[4].1,
        Value::map([
            ("city", Value::str("London")),
            ("$note", Value::str("a dollar key that is not first"))
        ])
    );
    assert!(matches!(got[5].1, Value::Nil));
}

#[test]
fn a_missing_file_starts_from_the_current_contents_and_the_first_save_creates_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.json");
    let store = InMemoryStore::new(1);
    ready(store.hashmap_set(MapId(0), s("before"), Value::Int(1))).unwrap();
    store.persist(0, &path).unwrap();
    assert!(!path.exists());
    assert_eq!(ready(store.hashmap_len(MapId(0))).unwrap(), 1);
    store.save(0).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(json, serde_json::json!({"before": 1}));
    assert_eq!(store.persisted_path(0).unwrap(), Some(path));
}

#[test]
fn an_existing_file_replaces_the_contents() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.json");
    fs::write(&path, r#"{"from_file": true}"#).unwrap();
    let store = InMemoryStore::new(1);
    ready(store.hashmap_set(MapId(0), s("in_memory"), Value::str("x".repeat(100)))).unwrap();
    store.persist(0, &path).unwrap();
    let keys: Vec<String> = entries(&store, 0)
        .iter()
        .map(|(k, _)| k.to_string())
        .collect();
    assert_eq!(keys, ["from_file"]);
    assert_eq!(store.bytes_used(), "from_file".len() + 16);
}

fn assert_load_error(content: &[u8], expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    fs::write(&path, content).unwrap();
    let store = InMemoryStore::with_names(["kept"]);
    ready(store.hashmap_set(MapId(0), s("k"), Value::Int(1))).unwrap();
    let err = store.persist(0, &path).unwrap_err();
    assert!(
        err.message.contains(&path.display().to_string()),
        "the error names the path: {}",
        err.message
    );
    assert!(err.message.contains("hashmap 'kept'"), "{}", err.message);
    assert!(err.message.contains(expect), "{expect:?}: {}", err.message);
    // Nothing changed and the hashmap is not bound to the file.
    assert_eq!(entries(&store, 0).len(), 1);
    assert_eq!(store.persisted_path(0).unwrap(), None);
    assert_eq!(
        fs::read(&path).unwrap(),
        content,
        "the file is left as it was"
    );
}

#[test]
fn a_corrupt_file_is_an_error_naming_the_path_never_an_empty_start() {
    assert_load_error(br#"{"a": 1, "b": "#, "not valid JSON");
    assert_load_error(b"", "not valid JSON");
    assert_load_error(b"\xff\xfe", "not valid JSON");
    assert_load_error(b"[1, 2]", "expected a JSON object");
    assert_load_error(br#"{"k": {"$some": 1, "extra": 2}}"#, "key 'k'");
    assert_load_error(br#"{"k": {"$float": "infinity"}}"#, "$float");
}

#[test]
fn an_unreadable_file_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("is_a_dir.json");
    fs::create_dir(&path).unwrap();
    let store = InMemoryStore::new(1);
    let err = store.persist(0, &path).unwrap_err();
    assert!(err.message.contains("cannot read"), "{}", err.message);
    assert!(
        err.message.contains(&path.display().to_string()),
        "{}",
        err.message
    );
}

#[test]
fn a_file_over_the_memory_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.json");
    fs::write(&path, format!(r#"{{"k": "{}"}}"#, "x".repeat(500))).unwrap();
    let store = InMemoryStore::new(1).with_max_bytes(Some(100));
    let err = store.persist(0, &path).unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Limit);
    assert!(err.message.contains("loading"), "{}", err.message);
    assert!(err.message.contains("big.json"), "{}", err.message);
    assert_eq!(store.bytes_used(), 0);
}

#[test]
fn an_unsaveable_value_fails_the_save_and_keeps_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.json");
    let store = InMemoryStore::with_names(["m"]);
    store.persist(0, &path).unwrap();
    ready(store.hashmap_set(MapId(0), s("good"), Value::Int(1))).unwrap();
    store.save(0).unwrap();
    let before = fs::read(&path).unwrap();
    ready(store.hashmap_set(MapId(0), s("fn"), Value::array(vec![Value::Builtin(0)]))).unwrap();
    let err = store.save(0).unwrap_err();
    assert!(err.message.contains("hashmap 'm'"), "{}", err.message);
    assert!(err.message.contains("key 'fn'"), "{}", err.message);
    assert!(err.message.contains("cannot be saved"), "{}", err.message);
    assert_eq!(fs::read(&path).unwrap(), before);
    assert!(temp_files(&path).is_empty());
}

#[test]
fn saving_a_hashmap_without_a_file_is_an_error() {
    let store = InMemoryStore::with_names(["m"]);
    let err = store.save(0).unwrap_err();
    assert!(err.message.contains("hashmap 'm'"), "{}", err.message);
    assert!(err.message.contains("persist"), "{}", err.message);
    // save_all skips hashmaps without files.
    store.save_all().unwrap();
}

#[test]
fn a_save_into_a_missing_directory_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/m.json");
    let store = InMemoryStore::new(1);
    store.persist(0, &path).unwrap();
    let err = store.save(0).unwrap_err();
    assert!(err.message.contains("temporary file"), "{}", err.message);
}

#[test]
fn save_all_saves_every_bound_hashmap_and_reports_each_failure() {
    let dir = tempfile::tempdir().unwrap();
    let store = InMemoryStore::with_names(["a", "b", "c"]);
    store.persist(0, dir.path().join("a.json")).unwrap();
    store.persist(1, dir.path().join("missing/b.json")).unwrap();
    ready(store.hashmap_set(MapId(0), s("x"), Value::Int(1))).unwrap();
    ready(store.hashmap_set(MapId(2), s("y"), Value::Int(2))).unwrap();
    let err = store.save_all().unwrap_err();
    assert!(err.message.contains("hashmap 'b'"), "{}", err.message);
    assert!(!err.message.contains("hashmap 'a'"), "{}", err.message);
    assert!(
        dir.path().join("a.json").exists(),
        "a is saved despite b failing"
    );
}

#[test]
fn leftover_temporary_files_are_ignored_and_removed_on_persist() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.json");
    fs::write(&path, r#"{"k": "good"}"#).unwrap();
    // Half-written files of killed saves.
    fs::write(
        dir.path().join(".m.json.concerto-tmp-99999-0"),
        r#"{"k": "ha"#,
    )
    .unwrap();
    fs::write(dir.path().join(".m.json.concerto-tmp-99999-1"), "").unwrap();
    assert_eq!(temp_files(&path).len(), 2);
    let store = InMemoryStore::new(1);
    store.persist(0, &path).unwrap();
    assert_eq!(
        ready(store.hashmap_get(MapId(0), "k")).unwrap(),
        Some(Value::str("good"))
    );
    assert!(temp_files(&path).is_empty());
}

#[cfg(unix)]
#[test]
fn a_save_keeps_the_file_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("private.json");
    fs::write(&path, "{}").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let store = InMemoryStore::new(1);
    store.persist(0, &path).unwrap();
    ready(store.hashmap_set(MapId(0), s("secret"), Value::Int(1))).unwrap();
    store.save(0).unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

fn counter_in(path: &Path) -> i64 {
    let json: serde_json::Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    let counter = json["counter"].as_i64().unwrap();
    // Every save is a consistent snapshot: the mirror key was written with the counter.
    assert_eq!(json["mirror"].as_i64(), Some(counter));
    counter
}

#[test]
fn concurrent_saves_never_interleave_or_go_back_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    let store = Arc::new(InMemoryStore::new(1));
    store.persist(0, &path).unwrap();
    // Padding makes each save take a little while, so saves overlap.
    ready(store.hashmap_set(MapId(0), s("padding"), Value::str("p".repeat(200_000)))).unwrap();
    ready(store.hashmap_set_many(
        MapId(0),
        vec![(s("counter"), Value::Int(0)), (s("mirror"), Value::Int(0))],
    ))
    .unwrap();
    store.save(0).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    // Observations are serialised: each read happens after the previous one, so the
    // counter on disk must never decrease.
    let last_seen = Arc::new(Mutex::new(0i64));
    let writer = {
        let store = store.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            for i in 1..=300i64 {
                ready(store.hashmap_set_many(
                    MapId(0),
                    vec![(s("counter"), Value::Int(i)), (s("mirror"), Value::Int(i))],
                ))
                .unwrap();
            }
            stop.store(true, Ordering::SeqCst);
        })
    };
    let savers: Vec<_> = (0..3)
        .map(|_| {
            let store = store.clone();
            let stop = stop.clone();
            let last_seen = last_seen.clone();
            let path = path.clone();
            std::thread::spawn(move || {
                let mut saves = 0;
                while !stop.load(Ordering::SeqCst) || saves < 5 {
                    store.save(0).unwrap();
                    saves += 1;
                    let mut last = last_seen.lock();
                    let now = counter_in(&path);
                    assert!(now >= *last, "the file went back from {} to {now}", *last);
                    *last = now;
                }
            })
        })
        .collect();
    writer.join().unwrap();
    for saver in savers {
        saver.join().unwrap();
    }
    store.save(0).unwrap();
    assert_eq!(counter_in(&path), 300);
    assert!(temp_files(&path).is_empty());
}

#[test]
fn on_change_mode_saves_every_write_before_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.json");
    let store = InMemoryStore::with_names(["live"]);
    store.persist_with(0, &path, PersistMode::OnChange).unwrap();
    let on_disk =
        || -> serde_json::Value { serde_json::from_slice(&fs::read(&path).unwrap()).unwrap() };
    ready(store.hashmap_set(MapId(0), s("a"), Value::Int(1))).unwrap();
    assert_eq!(on_disk(), serde_json::json!({"a": 1}));
    ready(store.hashmap_set_many(
        MapId(0),
        vec![
            (s("b"), Value::some(Value::Int(2))),
            (s("a"), Value::Int(3)),
        ],
    ))
    .unwrap();
    assert_eq!(on_disk(), serde_json::json!({"a": 3, "b": {"$some": 2}}));
    ready(store.hashmap_replace(MapId(0), s("a"), Value::Int(4))).unwrap();
    assert_eq!(on_disk(), serde_json::json!({"a": 4, "b": {"$some": 2}}));
    ready(store.hashmap_delete(MapId(0), "b")).unwrap();
    assert_eq!(on_disk(), serde_json::json!({"a": 4}));
    ready(store.hashmap_clear(MapId(0))).unwrap();
    assert_eq!(on_disk(), serde_json::json!({}));

    // A change that cannot be saved fails the write; it stays in memory.
    let err = ready(store.hashmap_set(MapId(0), s("f"), Value::Builtin(0))).unwrap_err();
    assert!(err.message.contains("hashmap 'live'"), "{}", err.message);
    assert!(
        err.message.contains("could not be saved"),
        "{}",
        err.message
    );
    assert_eq!(ready(store.hashmap_len(MapId(0))).unwrap(), 1);
    assert_eq!(on_disk(), serde_json::json!({}));

    // A reload sees the last saved state.
    ready(store.hashmap_delete(MapId(0), "f")).unwrap();
    ready(store.hashmap_set(MapId(0), s("z"), Value::str("last"))).unwrap();
    let again = InMemoryStore::new(1);
    again.persist(0, &path).unwrap();
    assert_eq!(
        ready(again.hashmap_get(MapId(0), "z")).unwrap(),
        Some(Value::str("last"))
    );
}

#[test]
fn on_demand_mode_does_not_write_until_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lazy.json");
    let store = InMemoryStore::new(1);
    store.persist(0, &path).unwrap();
    ready(store.hashmap_set(MapId(0), s("a"), Value::Int(1))).unwrap();
    assert!(!path.exists());
    store.save_all().unwrap();
    assert!(path.exists());
}
