//! The kill-point harness of resumable runs (issue 17), on SQLite and on a real
//! `redis-server`, and for the program compiled by concertoc 7ad10db
//! (`tests/durable/head/`) on SQLite: `tests/durable/durable.conc` makes effects of every kind (agent calls
//! against a loopback OpenAI-compatible server, an agent with memory, hashmap increments, a
//! ledger insert, a `std::http` POST to a loopback server, an MCP call to a stdio server that
//! logs its calls, an emit-await this harness answers, plain emits). It runs once without a
//! fault; then, for every journal commit k of that run, once killed right before commit k
//! (the effect performed, not journaled) and once right after it (journaled, the program
//! not told), each resumed with `--resume` until it finishes. Every outcome must be the
//! uninterrupted run's: the store's contents, each request the servers saw and each MCP call
//! once (the effect in flight at a `before` point at most twice), and the consumer's emits
//! (the first run's output followed by the resumed run's) the reference exactly at `after`
//! points, with at most the last two emits of the killed run delivered again at `before`
//! points. A random-kill loop (SIGKILL at a random moment, resume, kill again, …) checks the
//! same with one in-flight effect allowed per kill.
//!
//! Needs `--features fault-injection` (the `CONCERTO_FAULT` variable); `cargo xtask ci`
//! runs it so, and `cargo xtask durable` runs the random loop longer.
//! `CONCERTO_DURABLE_ROUNDS` sets the random loop's rounds per store (default 6),
//! `CONCERTO_DURABLE_SEED` its seed (printed).

// The harness reports N, the kill points and the random rounds with `--nocapture`.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

mod common;

use common::{Redis, bin, fresh_dir};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What the loopback server saw: each chat request's messages, each order posted.
#[derive(Default)]
struct Seen {
    chats: Vec<String>,
    orders: Vec<String>,
}

/// A loopback HTTP server: `…/chat/completions` answers as an OpenAI-compatible provider
/// (`answer to: <last message>`), `/orders` takes a POST; both are logged when received.
fn start_server() -> (String, Arc<Mutex<Seen>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || serve(stream, &log));
        }
    });
    (addr, seen)
}

fn serve(mut stream: std::net::TcpStream, log: &Mutex<Seen>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Some((head, body)) = common::read_request(&mut stream) else {
        return;
    };
    let path = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let reply = if path.ends_with("/chat/completions") {
        let request: Json = serde_json::from_str(&body).unwrap_or_default();
        let messages = request["messages"].clone();
        let last = messages
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_string();
        log.lock().unwrap().chats.push(messages.to_string());
        json!({"id": "c", "object": "chat.completion", "model": "test-model",
               "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": format!("answer to: {last}")}}],
               "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
        .to_string()
    } else {
        log.lock().unwrap().orders.push(body);
        json!({"accepted": true}).to_string()
    };
    let _ = stream.write_all(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{reply}",
            reply.len()
        )
        .as_bytes(),
    );
}

/// Where a case keeps its state.
enum Store {
    Sqlite(PathBuf),
    Redis(Redis),
}

impl Store {
    fn name(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Redis(_) => "redis",
        }
    }

    fn arg(&self) -> String {
        match self {
            Store::Sqlite(path) => path.display().to_string(),
            Store::Redis(redis) => format!("redis://127.0.0.1:{}/0", redis.port),
        }
    }

    fn reset(&self) {
        match self {
            Store::Sqlite(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Store::Redis(redis) => redis.flush(),
        }
    }
}

/// The program, compiled by concertoc 1a8ede9 and by 7ad10db.
const PROGRAM: &str = "tests/durable/durable.conc-ir";
const HEAD_PROGRAM: &str = "tests/durable/head/durable.head.conc-ir";

/// The durable program, ready to run: the server's address and the MCP command filled in,
/// `await emit` made an emit-await (see the program's header).
fn durable_program(source: &str, dir: &Path, server: &str, mcp_log: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join(source)).unwrap();
    let command = format!(
        "python3 '{}' '{}'",
        repo().join("tests/durable/mcp_counter.py").display(),
        mcp_log.display()
    );
    let text = text
        .replace("\"MCP_COMMAND\"", &serde_json::to_string(&command).unwrap())
        .replace("http://SERVER/", &format!("http://{server}/"));
    let mut ir: Json = serde_json::from_str(&text).unwrap();
    ir["connections"][0]["config"]["base_url"] = json!(format!("http://{server}/v1"));
    let rewritten = common::make_emit_awaits(&mut ir);
    assert_eq!(rewritten, 1, "the program has one `await emit`");
    let path = dir.join("durable.conc-ir");
    std::fs::write(&path, serde_json::to_string(&ir).unwrap()).unwrap();
    path
}

/// The dump program under the durable program's module name (the same hashmap, ledger and
/// memory in both stores).
fn dump_program(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("tests/durable/dump.conc-ir")).unwrap();
    let mut ir: Json = serde_json::from_str(&text).unwrap();
    ir["module"] = json!("durable");
    let path = dir.join("dump.conc-ir");
    std::fs::write(&path, serde_json::to_string(&ir).unwrap()).unwrap();
    path
}

/// What one process printed: its emits (stdout lines) and the emit-await questions it asked.
struct Ran {
    status: ExitStatus,
    emits: Vec<String>,
    questions: Vec<String>,
    stderr: String,
}

/// How a run ends: on its own, killed by a fault at a journal commit, or killed after a
/// delay.
#[derive(Clone, Copy)]
enum Ending<'a> {
    Natural,
    Fault(&'a str),
    KillAfter(Duration),
}

/// Runs the durable program as run `durable-run`, answering each emit-await with
/// `{"approved": true}`.
fn run(store: &Store, program: &Path, ending: Ending<'_>) -> Ran {
    let mut cmd = bin();
    cmd.args(["run", "--emit-format", "jsonl", "--answer-awaits"])
        .args(["--allow-net", "127.0.0.1", "--allow-tool", "Calc"])
        .args(["--allow-env", "DURABLE_TEST_KEY"])
        .args(["--state", &store.arg(), "--resume", "durable-run"])
        .arg(program)
        .env("DURABLE_TEST_KEY", "test-key")
        .env_remove("CONCERTO_FAULT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Ending::Fault(fault) = ending {
        cmd.env("CONCERTO_FAULT", fault);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let reader = std::thread::spawn(move || {
        let mut emits = Vec::new();
        let mut questions = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let parsed: Json = serde_json::from_str(&line).unwrap_or_default();
            if parsed["await"] == true {
                questions.push(line);
                // The process may be gone already (killed): a failed write is its business.
                let _ = writeln!(stdin, "{}", json!({"approved": true}));
                let _ = stdin.flush();
            } else {
                emits.push(line);
            }
        }
        (emits, questions)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let kill_at = match ending {
        Ending::KillAfter(delay) => Some(Instant::now() + delay),
        _ => None,
    };
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if kill_at.is_some_and(|at| Instant::now() >= at) {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        assert!(Instant::now() < deadline, "a durable run hung");
        std::thread::sleep(Duration::from_millis(1));
    };
    let (emits, questions) = reader.join().unwrap();
    Ran {
        status,
        emits,
        questions,
        stderr: stderr.join().unwrap(),
    }
}

/// The dump program's emits against `store`.
fn dump(store: &Store, dump: &Path) -> Vec<String> {
    let out = bin()
        .args(["run", "--emit-format", "jsonl", "--state", &store.arg()])
        .arg(dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Everything a run (or a run and its resumptions) did, as the outside world saw it.
#[derive(Debug, Clone, PartialEq)]
struct Observed {
    /// The consumer's emits: each process's output, in order.
    outputs: Vec<Vec<String>>,
    chats: Vec<String>,
    orders: Vec<String>,
    mcp_calls: Vec<String>,
    questions: Vec<String>,
    store: Vec<String>,
}

/// The extra items of `seen` over `reference` (as multisets), or why `seen` lacks one.
fn extras(what: &str, reference: &[String], seen: &[String]) -> Result<usize, String> {
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for item in seen {
        *counts.entry(item).or_default() += 1;
    }
    for item in reference {
        *counts.entry(item).or_default() -= 1;
    }
    if let Some((missing, _)) = counts.iter().find(|(_, n)| **n < 0) {
        return Err(format!("{what}: {missing} is missing (seen {seen:?})"));
    }
    Ok(counts.values().sum::<i64>() as usize)
}

/// Checks one case against the uninterrupted run: the store, every effect once (`extra`
/// effects allowed in all: the ones in flight at kills), the emits delivered in order with
/// at most `replayed_emits` delivered again at each process boundary (`exact`: none).
fn compare(reference: &Observed, seen: &Observed, extra: usize, exact: bool) -> Result<(), String> {
    if seen.store != reference.store {
        return Err(format!(
            "the store differs:\n  expected {:?}\n  found    {:?}",
            reference.store, seen.store
        ));
    }
    let mut total = 0;
    total += extras("LLM requests", &reference.chats, &seen.chats)?;
    total += extras("HTTP orders", &reference.orders, &seen.orders)?;
    total += extras("MCP calls", &reference.mcp_calls, &seen.mcp_calls)?;
    total += extras(
        "emit-await questions",
        &reference.questions,
        &seen.questions,
    )?;
    if total > extra {
        return Err(format!(
            "{total} effects repeated, at most {extra} allowed: LLM {:?}, orders {:?}, MCP {:?}, \
             questions {:?}",
            seen.chats, seen.orders, seen.mcp_calls, seen.questions
        ));
    }
    let expected = &reference.outputs[0];
    let mut at = 0;
    for (i, output) in seen.outputs.iter().enumerate() {
        // Where this process's output starts in the reference: where the previous ended,
        // or up to two emits before (delivered, their commit not made when it was killed).
        let starts: Vec<usize> = if exact || i == 0 {
            vec![at]
        } else {
            (at.saturating_sub(2)..=at).rev().collect()
        };
        let Some(start) = starts
            .into_iter()
            .find(|s| expected.get(*s..*s + output.len()) == Some(&output[..]))
        else {
            return Err(format!(
                "process {i}'s emits are not the reference's from emit {at}:\n  reference \
                 {expected:?}\n  outputs   {:?}",
                seen.outputs
            ));
        };
        at = start + output.len();
    }
    if at != expected.len() {
        return Err(format!(
            "the emits end at {at} of {}: {:?}",
            expected.len(),
            seen.outputs
        ));
    }
    Ok(())
}

/// One case: a fresh store and logs, runs until one exits successfully (at most `rounds`
/// processes; each may be ended by `ending(i)`), then the dump.
fn case(
    source: &str,
    store: &Store,
    dir: &Path,
    server: &(String, Arc<Mutex<Seen>>),
    ending: &mut dyn FnMut(usize) -> Ending<'static>,
) -> (Observed, usize) {
    store.reset();
    *server.1.lock().unwrap() = Seen::default();
    let mcp_log = dir.join("mcp.log");
    let _ = std::fs::remove_file(&mcp_log);
    let program = durable_program(source, dir, &server.0, &mcp_log);
    let mut outputs = Vec::new();
    let mut questions = Vec::new();
    let mut killed = 0;
    for i in 0.. {
        assert!(i < 50, "the run never finished: {outputs:?}");
        let ran = run(store, &program, ending(i));
        outputs.push(ran.emits);
        questions.extend(ran.questions);
        if ran.status.success() {
            break;
        }
        assert!(
            ran.status.code().is_none_or(|c| c != 1 && c != 2),
            "run {i} failed by itself: {}",
            ran.stderr
        );
        killed += 1;
    }
    let seen = std::mem::take(&mut *server.1.lock().unwrap());
    let mcp_calls = std::fs::read_to_string(&mcp_log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    let observed = Observed {
        outputs,
        chats: seen.chats,
        orders: seen.orders,
        mcp_calls,
        questions,
        store: dump(store, &dump_program(dir)),
    };
    (observed, killed)
}

/// The number of journal commits of an uninterrupted run, from `CONCERTO_FAULT=count`.
fn commits(source: &str, store: &Store, dir: &Path, server: &(String, Arc<Mutex<Seen>>)) -> u64 {
    store.reset();
    let program = durable_program(source, dir, &server.0, &dir.join("mcp.log"));
    let ran = run(store, &program, Ending::Fault("count"));
    assert!(ran.status.success(), "{}", ran.stderr);
    ran.stderr
        .lines()
        .find_map(|l| l.strip_prefix("journal commits: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no commit count on stderr (is the binary built with --features \
                 fault-injection?): {}",
                ran.stderr
            )
        })
}

/// A small xorshift generator (the random-kill loop's delays).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The harness for the program compiled to `source` (a path from the repository).
fn harness(source: &str, store: Store, dir: &Path) {
    let name = if source.ends_with(".head.conc-ir") {
        format!("{}, 7ad10db", store.name())
    } else {
        store.name().to_string()
    };
    let server = start_server();
    let (reference, _) = case(source, &store, dir, &server, &mut |_| Ending::Natural);
    // The program's last emit reports what it read back; the dump agrees with it.
    let last = reference.outputs[0].last().cloned().unwrap_or_default();
    assert!(last.contains(r#""channel":"state""#), "{last}");
    assert!(
        last.contains("[4,1,4]"),
        "counter 4, one order, four memory messages: {last}"
    );
    assert_eq!(reference.chats.len(), 4, "{:?}", reference.chats);
    assert_eq!(reference.orders.len(), 1);
    assert_eq!(reference.mcp_calls.len(), 1);
    assert_eq!(reference.questions.len(), 1);
    let started = Instant::now();
    let n = commits(source, &store, dir, &server);
    let one_run = started.elapsed();
    assert!(n >= 20, "the program journals {n} commits");
    let mut points = 0;
    for k in 1..=n {
        for (when, exact) in [("before", false), ("after", true)] {
            let fault: &'static str = Box::leak(format!("{when}:{k}").into_boxed_str());
            let (seen, killed) = case(source, &store, dir, &server, &mut |i| {
                if i == 0 {
                    Ending::Fault(fault)
                } else {
                    Ending::Natural
                }
            });
            assert_eq!(
                killed, 1,
                "[{name}] {fault}: the fault did not stop the run"
            );
            if let Err(why) = compare(&reference, &seen, usize::from(!exact), exact) {
                panic!("[{name}] kill point {fault}: {why}");
            }
            points += 1;
        }
    }
    let rounds: u64 = std::env::var("CONCERTO_DURABLE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("CONCERTO_DURABLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("durable[{name}]: random-kill seed {seed} (CONCERTO_DURABLE_SEED)");
    let mut rng = Rng(seed);
    let span = one_run.as_millis() as u64;
    let mut kills = 0;
    for round in 0..rounds {
        // Up to three kills at random moments, then the run may finish.
        let delays: Vec<u64> = (0..3).map(|_| rng.below(span)).collect();
        let (seen, killed) = case(source, &store, dir, &server, &mut |i| match delays.get(i) {
            Some(ms) => Ending::KillAfter(Duration::from_millis(*ms)),
            None => Ending::Natural,
        });
        if let Err(why) = compare(&reference, &seen, killed, false) {
            panic!("[{name}] random round {round} (seed {seed}, delays {delays:?} ms): {why}");
        }
        kills += killed;
    }
    println!(
        "durable[{name}]: N={n} journal commits, {points} kill points passed; random: \
         {rounds} rounds, {kills} kills, passed"
    );
}

#[test]
fn every_kill_point_resumes_to_the_uninterrupted_outcome_on_sqlite() {
    let dir = fresh_dir("sqlite");
    harness(PROGRAM, Store::Sqlite(dir.join("state.db")), &dir);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn every_kill_point_resumes_to_the_uninterrupted_outcome_on_redis() {
    let dir = fresh_dir("redis");
    harness(PROGRAM, Store::Redis(Redis::start()), &dir);
    let _ = std::fs::remove_dir_all(dir);
}

/// The same program compiled by concertoc 7ad10db (what users install today), on SQLite.
#[test]
fn every_kill_point_of_the_7ad10db_program_resumes_to_the_uninterrupted_outcome() {
    let dir = fresh_dir("head");
    harness(HEAD_PROGRAM, Store::Sqlite(dir.join("state.db")), &dir);
    let _ = std::fs::remove_dir_all(dir);
}

/// On Redis a run id belongs to its program's module: another program under the same id
/// starts a run of its own (on SQLite it meets the first program's journal: `cli.rs`'s
/// divergence test).
#[test]
fn on_redis_a_run_id_belongs_to_its_program() {
    let redis = Redis::start();
    let state = format!("redis://127.0.0.1:{}/0", redis.port);
    let counter = bin()
        .args([
            "run",
            "--emit-format",
            "jsonl",
            "--resume",
            "shared-id",
            "--state",
            &state,
        ])
        .arg(repo().join("tests/memory/counter.conc-ir"))
        .output()
        .unwrap();
    assert!(
        counter.status.success(),
        "{}",
        String::from_utf8_lossy(&counter.stderr)
    );
    let other = bin()
        .args([
            "run",
            "--emit-format",
            "jsonl",
            "--mock",
            "--resume",
            "shared-id",
        ])
        .args(["--state", &state])
        .arg(repo().join("tests/resume/ten_calls.conc-ir"))
        .output()
        .unwrap();
    assert!(
        other.status.success(),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    assert!(String::from_utf8_lossy(&other.stdout).contains(r#"{"channel":"done","payload":10}"#));
}
