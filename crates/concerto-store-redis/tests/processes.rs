//! Several processes — each with its own `RedisStore` on one real `redis-server` — write
//! to the same hashmap, ledgers and memories at once: the final state is exactly the union
//! of their writes (no lost insert, no duplicate), and every subscribed process sees every
//! change event exactly once.
//!
//! The parent test re-runs this test binary with only [`child_process`] selected and
//! `CONCERTO_REDIS_CHILD=<url> <index>` set. Without that variable `child_process` returns
//! at once, so it passes in ordinary runs.

use concerto_vm::host::MapId;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{RedisServer, eventually, s, wait};
use concerto_memory::HashMapChange;
use concerto_store_redis::RedisStore;
use concerto_vm::Value;
use concerto_vm::host::{
    ChatMessage, ConversationStore, HashmapStore, LedgerEntry, LedgerQuery, LedgerStore,
};

const CHILD_ENV: &str = "CONCERTO_REDIS_CHILD";
const CHILD_TEST: &str = "processes::child_process";
const PROGRAM: &str = "shared-program";

/// Writer processes.
const PROCESSES: usize = 4;
/// Threads per process, writing at the same time.
const THREADS: usize = 4;
/// Keys only one process writes, per process.
const OWN_KEYS: usize = 200;
/// Keys every process overwrites, and how many times each process writes each.
const SHARED_KEYS: usize = 20;
const ROUNDS: usize = 5;
/// Entries of one `set_many` per process.
const BATCH: usize = 10;
/// Ledger entries only one process inserts, per process; every process also upserts one
/// shared entry per shared key.
const OWN_ENTRIES: usize = 50;
/// Messages each process appends to the unbounded memory and to the windowed one.
const MESSAGES: usize = 30;
const WINDOW: u64 = 10;

/// Change events every subscriber must see.
const EVENTS: usize = PROCESSES * (OWN_KEYS + SHARED_KEYS * ROUNDS + BATCH);

fn names() -> Vec<String> {
    vec!["counters".to_string(), "unused".to_string()]
}

/// The child's side: subscribe, say READY, wait for GO, write from several threads, then
/// wait until every process's changes have arrived and report.
#[test]
#[allow(clippy::print_stdout)]
fn child_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (url, index) = spec.split_once(' ').expect("url and index");
    let me: usize = index.parse().expect("index");
    let store = Arc::new(RedisStore::connect(url, PROGRAM, names()).expect("child connects"));

    let events = Arc::new(AtomicUsize::new(0));
    let own_events = Arc::new(AtomicUsize::new(0));
    let counter = events.clone();
    let own_counter = own_events.clone();
    store
        .on_change(
            0,
            Arc::new(move |c: &HashMapChange| {
                counter.fetch_add(1, Ordering::SeqCst);
                if c.key.starts_with(&format!("p{me}:")) {
                    own_counter.fetch_add(1, Ordering::SeqCst);
                }
            }),
        )
        .expect("child subscribes");
    println!("CHILD-READY {me}");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("GO line");
    assert_eq!(line.trim(), "GO");

    // Writes from THREADS threads at once, the shared keys first (so processes collide on
    // them); `first_writes` counts the replaces that found a shared key absent (exactly
    // one per shared key over all processes).
    let first_writes = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let store = &store;
            let first_writes = &first_writes;
            scope.spawn(move || {
                for r in 0..ROUNDS {
                    for k in (t..SHARED_KEYS).step_by(THREADS) {
                        let key = s(&format!("shared:{k:02}"));
                        let value = Value::str(format!("p{me}r{r}"));
                        if wait(store.hashmap_replace(MapId(0), key, value))
                            .unwrap()
                            .is_none()
                        {
                            first_writes.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                for j in (t..OWN_KEYS).step_by(THREADS) {
                    let key = s(&format!("p{me}:k{j:03}"));
                    wait(store.hashmap_set(MapId(0), key, Value::Int((me * 1000 + j) as i64)))
                        .unwrap();
                }
                for j in (t..OWN_ENTRIES).step_by(THREADS) {
                    let entry = LedgerEntry {
                        identifier: format!("p{me} entry {j}"),
                        keys: vec![format!("p{me}"), "all".into()],
                        value: Value::Int(j as i64),
                    };
                    wait(store.ledger_insert("facts", entry)).unwrap();
                }
                for k in (t..SHARED_KEYS).step_by(THREADS) {
                    let entry = LedgerEntry {
                        identifier: format!("shared entry {k}"),
                        keys: vec!["shared".into()],
                        value: Value::str(format!("p{me}")),
                    };
                    wait(store.ledger_insert("facts", entry)).unwrap();
                }
                for m in (t..MESSAGES).step_by(THREADS) {
                    let msg = ChatMessage::new("user", format!("p{me} m{m}"));
                    wait(store.memory_append("log", None, msg.clone())).unwrap();
                    wait(store.memory_append("window", Some(WINDOW), msg)).unwrap();
                }
            });
        }
    });
    let batch = (0..BATCH)
        .map(|b| (s(&format!("p{me}:batch{b}")), Value::Int(b as i64)))
        .collect();
    wait(store.hashmap_set_many(MapId(0), batch)).unwrap();

    let all_arrived = eventually(Duration::from_secs(20), || {
        events.load(Ordering::SeqCst) >= EVENTS
    });
    // Anything extra (a duplicate) would arrive now.
    std::thread::sleep(Duration::from_millis(200));
    println!(
        "CHILD-RESULT {me} events={} own={} first_writes={} arrived={all_arrived} malformed={}",
        events.load(Ordering::SeqCst),
        own_events.load(Ordering::SeqCst),
        first_writes.load(Ordering::SeqCst),
        store.malformed_events()
    );
}

/// Reads the child's stdout lines into a channel.
fn forward_lines(child: &mut Child, index: usize, tx: mpsc::Sender<(usize, String)>) {
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((index, line)).is_err() {
                break;
            }
        }
    });
}

fn field(line: &str, name: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        .to_string()
}

#[test]
fn many_processes_share_one_store_without_losing_writes() {
    let server = RedisServer::start();
    let exe = std::env::current_exe().unwrap();
    // The parent subscribes too: one more process-local subscriber.
    let parent = RedisStore::connect(&server.url(), PROGRAM, names()).unwrap();
    let parent_events = Arc::new(AtomicUsize::new(0));
    let counter = parent_events.clone();
    parent
        .on_any_change(Arc::new(move |_: &HashMapChange| {
            counter.fetch_add(1, Ordering::SeqCst);
        }))
        .unwrap();

    let (tx, rx) = mpsc::channel();
    let mut children: Vec<Child> = (0..PROCESSES)
        .map(|i| {
            let mut child = Command::new(&exe)
                .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, format!("{} {i}", server.url()))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            forward_lines(&mut child, i, tx.clone());
            child
        })
        .collect();
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(60);
    let next_line = |what: &str| -> (usize, String) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                // The test harness may print `test child_process ... ` before it.
                Ok((i, line)) if line.contains(what) => return (i, line),
                Ok(_) => continue,
                Err(e) => panic!("children did not all report {what}: {e}"),
            }
        }
    };
    for _ in 0..PROCESSES {
        next_line("CHILD-READY");
    }
    // Every process is subscribed: start them all at once.
    for child in &mut children {
        writeln!(child.stdin.as_mut().unwrap(), "GO").unwrap();
    }
    let mut results = HashMap::new();
    for _ in 0..PROCESSES {
        let (i, line) = next_line("CHILD-RESULT");
        results.insert(i, line);
    }
    for (i, mut child) in children.into_iter().enumerate() {
        let status = child.wait().unwrap();
        assert!(status.success(), "child {i} failed: {status}");
    }

    // Every subscriber process saw every change exactly once.
    let mut first_writes = 0;
    for i in 0..PROCESSES {
        let line = &results[&i];
        assert_eq!(
            field(line, "events"),
            EVENTS.to_string(),
            "child {i}: {line}"
        );
        assert_eq!(
            field(line, "own"),
            (OWN_KEYS + BATCH).to_string(),
            "child {i}: {line}"
        );
        assert_eq!(field(line, "malformed"), "0", "child {i}: {line}");
        first_writes += field(line, "first_writes").parse::<usize>().unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || parent_events
            .load(Ordering::SeqCst)
            >= EVENTS),
        "the parent saw {} of {EVENTS} changes",
        parent_events.load(Ordering::SeqCst)
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(parent_events.load(Ordering::SeqCst), EVENTS);
    // Atomic replace: over all processes, exactly one write found each shared key absent.
    assert_eq!(first_writes, SHARED_KEYS);

    // The hashmap holds exactly the union of the writes.
    let entries = wait(parent.hashmap_entries(MapId(0))).unwrap();
    assert_eq!(entries.len(), PROCESSES * (OWN_KEYS + BATCH) + SHARED_KEYS);
    assert_eq!(wait(parent.hashmap_len(MapId(0))).unwrap(), entries.len());
    let map: HashMap<String, Value> = entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    for p in 0..PROCESSES {
        for j in 0..OWN_KEYS {
            let v = &map[&format!("p{p}:k{j:03}")];
            assert!(matches!(v, Value::Int(n) if *n == (p * 1000 + j) as i64));
        }
        for b in 0..BATCH {
            assert!(matches!(map[&format!("p{p}:batch{b}")], Value::Int(n) if n == b as i64));
        }
    }
    for k in 0..SHARED_KEYS {
        let Value::Str(text) = &map[&format!("shared:{k:02}")] else {
            panic!("shared:{k:02} is not a string");
        };
        let valid =
            (0..PROCESSES).any(|p| (0..ROUNDS).any(|r| text.as_str() == format!("p{p}r{r}")));
        assert!(valid, "shared:{k:02} = {text}");
    }
    // Insertion order: each writer thread's keys appear in the order it wrote them, and
    // each batch's keys together in batch order.
    let position: HashMap<&str, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.as_str(), i))
        .collect();
    for p in 0..PROCESSES {
        for t in 0..THREADS {
            let places: Vec<usize> = (t..OWN_KEYS)
                .step_by(THREADS)
                .map(|j| position[format!("p{p}:k{j:03}").as_str()])
                .collect();
            assert!(places.windows(2).all(|w| w[0] < w[1]), "p{p} thread {t}");
        }
        let batch: Vec<usize> = (0..BATCH)
            .map(|b| position[format!("p{p}:batch{b}").as_str()])
            .collect();
        assert!(batch.windows(2).all(|w| w[1] == w[0] + 1), "p{p} batch");
    }

    // Ledger: every insert is there once; shared identifiers were upserted, not duplicated.
    let ledger = wait(parent.ledger_entries("facts")).unwrap();
    assert_eq!(ledger.len(), PROCESSES * OWN_ENTRIES + SHARED_KEYS);
    for p in 0..PROCESSES {
        let mine = wait(parent.ledger_query("facts", LedgerQuery::Key(format!("P{p}")))).unwrap();
        assert_eq!(mine.len(), OWN_ENTRIES);
    }
    let shared = wait(parent.ledger_query("facts", LedgerQuery::Key("shared".into()))).unwrap();
    assert_eq!(shared.len(), SHARED_KEYS);

    // Memories: every append is there; the window holds the newest WINDOW.
    let log = wait(parent.memory_messages("log")).unwrap();
    assert_eq!(log.len(), PROCESSES * MESSAGES);
    let mut contents: Vec<String> = log.into_iter().map(|m| m.content).collect();
    contents.sort();
    contents.dedup();
    assert_eq!(contents.len(), PROCESSES * MESSAGES);
    assert_eq!(
        wait(parent.memory_messages("window")).unwrap().len(),
        WINDOW as usize
    );
}
