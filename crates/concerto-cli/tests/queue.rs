//! Many machines (issue 18): `concerto submit`, `worker`, `watch` and `queue stats` against
//! a real `redis-server`, with worker processes of the real binary and a loopback
//! OpenAI-compatible server that logs every chat request it receives. The program is
//! `tests/queue/chaos.conc` (compiled by concertoc 7ad10db): three agent calls whose
//! prompts name the run and the step, each step counted in the run's own key of a shared
//! hashmap (a read, then a write).
//!
//! The chaos test starts `CONCERTO_CHAOS_WORKERS` workers (default 3), queues
//! `CONCERTO_CHAOS_RUNS` runs (default 40) and, until every run has ended, SIGKILLs a random
//! worker (and starts a new one) or SIGSTOPs one past its lease and resumes it, every
//! `CONCERTO_CHAOS_INTERVAL_MS` (default 1200) ± half, each worker running
//! `CONCERTO_CHAOS_CONCURRENCY` runs at once (default 2) against a server answering after
//! `CONCERTO_CHAOS_DELAY_MS` (default 400); `cargo xtask chaos` runs 4 workers and 200 runs. Every run must end exactly once, done, with the emits it has when run alone (each
//! once, in order); every key of the hashmap must hold exactly 3; the server must have seen
//! every prompt, and a run's prompts more than once only as often as the run was taken over
//! (the call in flight when its worker died or was fenced out).

// The chaos test reports its seed, runs, kills and repeated calls with `--nocapture`.
#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

mod common;

use common::{Redis, bin, fresh_dir};

fn program() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/queue/chaos.head.conc-ir")
}

/// A loopback OpenAI-compatible server answering `answer to: <last message>` after
/// `delay`; every request's last message is logged when it arrives.
struct ChatServer {
    addr: String,
    prompts: Arc<Mutex<Vec<String>>>,
}

impl ChatServer {
    fn start(delay: Duration) -> ChatServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let prompts = Arc::new(Mutex::new(Vec::new()));
        let log = prompts.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || answer(stream, &log, delay));
            }
        });
        ChatServer { addr, prompts }
    }

    /// How many requests each prompt got.
    fn counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for prompt in self.prompts.lock().unwrap().iter() {
            *counts.entry(prompt.clone()).or_default() += 1;
        }
        counts
    }

    /// A `--config` file pointing the program's connection here (in `dir`, named after
    /// the server's address).
    fn config(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("llm-{}.toml", self.addr.replace([':', '.'], "-")));
        std::fs::write(
            &path,
            format!(
                "[connections.llm]\nbase_url = \"http://{}/v1\"\napi_key_env = \"CHAOS_KEY\"\n",
                self.addr
            ),
        )
        .unwrap();
        path
    }
}

fn answer(mut stream: std::net::TcpStream, log: &Mutex<Vec<String>>, delay: Duration) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Some((_, body)) = common::read_request(&mut stream) else {
        return;
    };
    let request: Json = serde_json::from_str(&body).unwrap_or_default();
    let last = request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    log.lock().unwrap().push(last.clone());
    std::thread::sleep(delay);
    let reply = json!({"id": "c", "object": "chat.completion", "model": "test-model",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": format!("answer to: {last}")}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
    .to_string();
    let _ = stream.write_all(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{reply}",
            reply.len()
        )
        .as_bytes(),
    );
}

/// The flags every run of the program needs: the config, the network, RUN_N.
fn program_flags(config: &Path) -> Vec<String> {
    vec![
        "--config".into(),
        config.display().to_string(),
        "--allow-net".into(),
        "127.0.0.1".into(),
        "--allow-env".into(),
        "RUN_N".into(),
    ]
}

/// The emits of run `n` when run alone (`concerto run`, in-memory state), as JSON lines.
fn alone(n: usize, config: &Path) -> Vec<String> {
    let out = bin()
        .arg("run")
        .arg(program())
        .args(program_flags(config))
        .args(["--emit-format", "jsonl"])
        .env("RUN_N", n.to_string())
        .env("CHAOS_KEY", "test-key")
        .output()
        .unwrap();
    assert!(out.status.success(), "run {n} alone: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// `concerto submit` of run `n` (`--var RUN_N=n`); its id (the last word printed).
fn submit(queue: &str, n: &str) -> String {
    let out = bin()
        .arg("submit")
        .arg(program())
        .args(["--queue", queue, "--var", &format!("RUN_N={n}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "submit: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace().last().unwrap().to_string()
}

/// `concerto queue stats --json`.
fn stats(queue: &str) -> Json {
    let out = bin()
        .args(["queue", "stats", "--json", "--queue", queue])
        .output()
        .unwrap();
    assert!(out.status.success(), "stats: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `concerto watch RUN --emit-format jsonl`: stdout lines, stderr, exit code.
fn watch(queue: &str, run: &str) -> (Vec<String>, String, i32) {
    let out = bin()
        .args(["watch", run, "--emit-format", "jsonl", "--queue", queue])
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    (
        lines,
        String::from_utf8_lossy(&out.stderr).to_string(),
        out.status.code().unwrap_or(-1),
    )
}

/// A worker process; its stderr goes to `log`.
fn start_worker(queue: &str, config: &Path, name: &str, log: &Path, extra: &[&str]) -> Child {
    bin()
        .arg("worker")
        .args(["--queue", queue, "--name", name])
        .args(program_flags(config))
        .args(extra)
        .env("CHAOS_KEY", "test-key")
        .env_remove("RUN_N")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Sends `signal` (`TERM`, `STOP`, `CONT`) to `child`.
fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal}");
}

/// Waits for `child` to exit within `limit`; its status.
fn wait_for(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "a worker did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `ready(stats)` holds (within `limit`).
fn wait_stats(queue: &str, limit: Duration, ready: impl Fn(&Json) -> bool) -> Json {
    let deadline = Instant::now() + limit;
    loop {
        let now = stats(queue);
        if ready(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the queue did not get there: {now}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The program's hashmap `totals` in the store: key → value.
fn totals(redis: &Redis) -> BTreeMap<String, String> {
    let keys = redis.cli(&["--scan", "--pattern", "concerto:*:hm:totals:data"]);
    assert_eq!(keys.len(), 1, "one `totals` hashmap: {keys:?}");
    let flat = redis.cli(&["HGETALL", &keys[0]]);
    flat.chunks(2)
        .map(|kv| (kv[0].clone(), kv[1].clone()))
        .collect()
}

/// A run's `attempts` as the queue records it.
fn attempts(redis: &Redis, run: &str) -> usize {
    let keys = redis.cli(&[
        "--scan",
        "--pattern",
        &format!("concerto-queue:*:run:{run}"),
    ]);
    assert_eq!(keys.len(), 1, "run {run}: {keys:?}");
    redis.cli(&["HGET", &keys[0], "attempts"])[0]
        .parse()
        .unwrap()
}

#[test]
fn submitted_runs_are_executed_by_a_worker_and_watched_with_the_output_they_have_alone() {
    let dir = fresh_dir("basic");
    let redis = Redis::start();
    let server = ChatServer::start(Duration::ZERO);
    let config = server.config(&dir);
    let queue = format!("{}/basic", redis.url());
    let runs: Vec<String> = ["1", "2", "boom"]
        .iter()
        .map(|n| submit(&queue, n))
        .collect();
    assert!(runs.iter().all(|r| r.len() == 16), "{runs:?}");
    let before = stats(&queue);
    assert_eq!(before["queued"], 3, "{before}");
    assert_eq!(before["done"], 0, "{before}");
    let mut worker = start_worker(&queue, &config, "w1", &dir.join("w1.log"), &[]);
    for (n, run) in [1, 2].iter().zip(&runs) {
        let (lines, stderr, code) = watch(&queue, run);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(lines, alone(*n, &config), "run {n}");
        assert!(stderr.contains(&format!("run {run}: done")), "{stderr}");
    }
    // An uncaught program error fails the run at once: not retried.
    let (lines, stderr, code) = watch(&queue, &runs[2]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        lines.first().map(String::as_str),
        Some(r#"{"channel":"start","payload":"boom"}"#)
    );
    assert!(
        stderr.contains("failed") && stderr.contains("unwrap"),
        "{stderr}"
    );
    assert_eq!(attempts(&redis, &runs[2]), 1);
    let after = wait_stats(&queue, Duration::from_secs(10), |s| s["done"] == 2);
    assert_eq!(
        (
            after["queued"].clone(),
            after["running"].clone(),
            after["failed"].clone()
        ),
        (json!(0), json!(0), json!(1)),
        "{after}"
    );
    // A submitted variable may not replace one of the worker's own environment.
    let shadow = {
        let out = bin()
            .arg("submit")
            .arg(program())
            .args(["--queue", &queue, "--var", "CHAOS_KEY=stolen"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .last()
            .unwrap()
            .to_string()
    };
    let (_, stderr, code) = watch(&queue, &shadow);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("CHAOS_KEY") && stderr.contains("worker's own environment"),
        "{stderr}"
    );
    signal(&worker, "TERM");
    let status = wait_for(&mut worker, Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(dir.join("w1.log")).unwrap();
    assert!(log.contains("stopped: 4 taken, 2 done, 2 failed"), "{log}");
    // Unknown runs are an error naming the run.
    let (_, stderr, code) = watch(&queue, "0000000000000000");
    assert_eq!(code, 2);
    assert!(stderr.contains("no run `0000000000000000`"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_paused_worker_is_fenced_out_once_another_claimed_its_run() {
    let dir = fresh_dir("fenced");
    let redis = Redis::start();
    // Slow answers: the first worker is paused inside its first agent call.
    let server = ChatServer::start(Duration::from_millis(700));
    let config = server.config(&dir);
    let queue = format!("{}/fenced", redis.url());
    let run = submit(&queue, "7");
    let lease = ["--lease", "1", "--concurrency", "1"];
    let mut first = start_worker(&queue, &config, "first", &dir.join("first.log"), &lease);
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.prompts.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the first worker made no call");
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(&first, "STOP");
    let mut second = start_worker(&queue, &config, "second", &dir.join("second.log"), &lease);
    let (lines, stderr, code) = watch(&queue, &run);
    assert_eq!(code, 0, "{stderr}");
    // The paused worker wakes up holding a run that is no longer its own.
    signal(&first, "CONT");
    std::thread::sleep(Duration::from_secs(2));
    for w in [&first, &second] {
        signal(w, "TERM");
    }
    assert!(wait_for(&mut first, Duration::from_secs(20)).success());
    assert!(wait_for(&mut second, Duration::from_secs(20)).success());
    let first_log = std::fs::read_to_string(dir.join("first.log")).unwrap();
    assert!(
        first_log.contains("1 lost to another worker"),
        "{first_log}"
    );
    assert!(first_log.contains("0 done"), "{first_log}");
    assert_eq!(
        lines,
        alone(7, &ChatServer::start(Duration::ZERO).config(&dir))
    );
    assert_eq!(totals(&redis).get("run:7").map(String::as_str), Some("3"));
    assert_eq!(attempts(&redis, &run), 2);
    // The first call was made by both (the second worker repeated the call in flight);
    // the others once.
    let counts = server.counts();
    assert_eq!(counts.get("run 7 step 0"), Some(&2), "{counts:?}");
    assert_eq!(counts.get("run 7 step 1"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("run 7 step 2"), Some(&1), "{counts:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_terminated_worker_hands_its_runs_back_and_another_finishes_them() {
    let dir = fresh_dir("handback");
    let redis = Redis::start();
    let server = ChatServer::start(Duration::from_millis(600));
    let config = server.config(&dir);
    let queue = format!("{}/handback", redis.url());
    let runs: Vec<String> = (10..13).map(|n| submit(&queue, &n.to_string())).collect();
    let grace = ["--shutdown-grace", "0.3", "--concurrency", "3"];
    let mut leaving = start_worker(&queue, &config, "leaving", &dir.join("leaving.log"), &grace);
    let busy = wait_stats(&queue, Duration::from_secs(20), |s| s["running"] == 3);
    assert_eq!(busy["running_by_worker"], json!({"leaving": 3}), "{busy}");
    std::thread::sleep(Duration::from_millis(300));
    signal(&leaving, "TERM");
    assert!(wait_for(&mut leaving, Duration::from_secs(20)).success());
    let log = std::fs::read_to_string(dir.join("leaving.log")).unwrap();
    assert!(log.contains("3 handed back"), "{log}");
    let handed = stats(&queue);
    assert_eq!(
        (handed["queued"].clone(), handed["running"].clone()),
        (json!(3), json!(0)),
        "{handed}"
    );
    let mut staying = start_worker(&queue, &config, "staying", &dir.join("staying.log"), &[]);
    wait_stats(&queue, Duration::from_secs(30), |s| s["done"] == 3);
    signal(&staying, "TERM");
    assert!(wait_for(&mut staying, Duration::from_secs(20)).success());
    let reference = ChatServer::start(Duration::ZERO).config(&dir);
    for (n, run) in (10..13).zip(&runs) {
        let (lines, stderr, code) = watch(&queue, run);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(lines, alone(n, &reference), "run {n}");
        // A hand-back is not an attempt: the run was taken twice, counted once.
        assert_eq!(attempts(&redis, run), 1, "run {n}");
    }
    let totals = totals(&redis);
    for n in 10..13 {
        assert_eq!(
            totals.get(&format!("run:{n}")).map(String::as_str),
            Some("3")
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_run_whose_lease_is_lost_too_often_is_dead_lettered_and_expires() {
    let dir = fresh_dir("dead");
    let redis = Redis::start();
    let server = ChatServer::start(Duration::from_millis(800));
    let config = server.config(&dir);
    let queue = format!("{}/dl", redis.url());
    let run = submit(&queue, "3");
    let flags = ["--lease", "1", "--max-attempts", "1", "--keep-results", "2"];
    let mut doomed = start_worker(&queue, &config, "doomed", &dir.join("doomed.log"), &flags);
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.prompts.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the worker made no call");
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = doomed.kill();
    let _ = doomed.wait();
    // The next worker claims the run once the lease ran out: a second attempt of one
    // allowed, so the run is dead-lettered rather than run.
    let mut next = start_worker(&queue, &config, "next", &dir.join("next.log"), &flags);
    let (lines, stderr, code) = watch(&queue, &run);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "run {run}: dead: lease lost 1 times (max attempts 1)"
        )),
        "{stderr}"
    );
    assert_eq!(
        lines,
        vec![r#"{"channel":"start","payload":"3"}"#.to_string()]
    );
    let dead = stats(&queue);
    assert_eq!(
        (dead["dead"].clone(), dead["done"].clone()),
        (json!(1), json!(0)),
        "{dead}"
    );
    let letters = redis.cli(&["XRANGE", "concerto-queue:dl:dead-letter", "-", "+"]);
    assert!(letters.iter().any(|l| l == &run), "{letters:?}");
    assert_eq!(
        server.counts().get("run 3 step 1"),
        None,
        "a dead run is not run"
    );
    // Its record is kept for --keep-results (2 s), then gone.
    std::thread::sleep(Duration::from_millis(2500));
    let (_, stderr, code) = watch(&queue, &run);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("unknown, or its result has expired"),
        "{stderr}"
    );
    let later = bin()
        .args([
            "queue",
            "stats",
            "--json",
            "--keep-results",
            "2",
            "--queue",
            &queue,
        ])
        .output()
        .unwrap();
    let later: Json = serde_json::from_slice(&later.stdout).unwrap();
    assert_eq!(later["dead"], 0, "{later}");
    signal(&next, "TERM");
    assert!(wait_for(&mut next, Duration::from_secs(20)).success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// xorshift64*: the chaos loop's choices, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn chaos_every_run_completes_exactly_once_while_workers_are_killed_and_paused() {
    let workers = env_number("CONCERTO_CHAOS_WORKERS", 3) as usize;
    let runs = env_number("CONCERTO_CHAOS_RUNS", 40) as usize;
    let interval = env_number("CONCERTO_CHAOS_INTERVAL_MS", 1200);
    let delay = env_number("CONCERTO_CHAOS_DELAY_MS", 400);
    let concurrency = env_number("CONCERTO_CHAOS_CONCURRENCY", 2).to_string();
    let seed = env_number(
        "CONCERTO_CHAOS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1,
    );
    println!("chaos: {workers} workers, {runs} runs, seed {seed} (CONCERTO_CHAOS_SEED)");
    let mut rng = Rng(seed);
    let dir = fresh_dir("chaos");
    let redis = Redis::start();
    let reference = ChatServer::start(Duration::ZERO);
    let reference_config = reference.config(&dir);
    let expected: Vec<Vec<String>> = std::thread::scope(|s| {
        let chunks: Vec<_> = (0..4)
            .map(|t| {
                let config = &reference_config;
                s.spawn(move || {
                    (0..runs)
                        .filter(|n| n % 4 == t)
                        .map(|n| (n, alone(n, config)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<(usize, Vec<String>)> =
            chunks.into_iter().flat_map(|c| c.join().unwrap()).collect();
        all.sort();
        all.into_iter().map(|(_, lines)| lines).collect()
    });
    let server = ChatServer::start(Duration::from_millis(delay));
    let config = server.config(&dir);
    let queue = format!("{}/chaos", redis.url());
    let ids: Vec<String> = (0..runs).map(|n| submit(&queue, &n.to_string())).collect();
    let flags = [
        "--lease",
        "1.5",
        "--max-attempts",
        "50",
        "--concurrency",
        &concurrency,
    ];
    let mut started = 0;
    let spawn = |started: &mut usize| {
        *started += 1;
        let name = format!("w{started}");
        let log = dir.join(format!("{name}.log"));
        (start_worker(&queue, &config, &name, &log, &flags), log)
    };
    let mut pool: Vec<(Child, PathBuf)> = (0..workers).map(|_| spawn(&mut started)).collect();
    let (mut kills, mut stops) = (0, 0);
    let began = Instant::now();
    let limit = Duration::from_secs(60 + runs as u64);
    loop {
        let now = stats(&queue);
        if now["done"].as_u64().unwrap_or(0)
            + now["failed"].as_u64().unwrap_or(0)
            + now["dead"].as_u64().unwrap_or(0)
            == runs as u64
        {
            break;
        }
        assert!(
            began.elapsed() < limit,
            "the runs did not finish in {limit:?}: {now}"
        );
        std::thread::sleep(Duration::from_millis(interval / 2 + rng.below(interval)));
        let victim = rng.below(pool.len() as u64) as usize;
        if rng.below(10) < 7 {
            let (mut dead, _) = pool.swap_remove(victim);
            let _ = dead.kill();
            let _ = dead.wait();
            kills += 1;
            pool.push(spawn(&mut started));
        } else {
            signal(&pool[victim].0, "STOP");
            std::thread::sleep(Duration::from_millis(2000 + rng.below(1000)));
            signal(&pool[victim].0, "CONT");
            stops += 1;
        }
    }
    // A worker started by the last kill may still be starting: each is stopped once it is
    // taking runs (its signal handlers are in place).
    for (worker, log) in &mut pool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&*log)
            .unwrap_or_default()
            .contains("taking runs")
        {
            assert!(Instant::now() < deadline, "a worker did not start: {log:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        signal(worker, "TERM");
        let status = wait_for(worker, Duration::from_secs(40));
        assert!(status.success(), "a worker stopped by SIGTERM: {status:?}");
    }
    let end = stats(&queue);
    assert_eq!(
        (
            end["done"].clone(),
            end["failed"].clone(),
            end["dead"].clone()
        ),
        (json!(runs), json!(0), json!(0)),
        "{end}"
    );
    // Each run's emits: exactly its output alone, each once, in order.
    for (n, run) in ids.iter().enumerate() {
        let (lines, stderr, code) = watch(&queue, run);
        assert_eq!(code, 0, "run {n}: {stderr}");
        assert_eq!(lines, expected[n], "run {n} ({run})");
    }
    // The shared hashmap: one key per run, each step counted once.
    let totals = totals(&redis);
    assert_eq!(totals.len(), runs, "{totals:?}");
    for n in 0..runs {
        assert_eq!(
            totals.get(&format!("run:{n}")).map(String::as_str),
            Some("3"),
            "run {n}"
        );
    }
    // The server: every prompt; a run's prompts repeated at most once per takeover.
    let counts = server.counts();
    let (mut repeated, mut takeovers) = (0, 0);
    for (n, run) in ids.iter().enumerate() {
        let taken_over = attempts(&redis, run) - 1;
        let mut extra = 0;
        for step in 0..3 {
            let seen = counts
                .get(&format!("run {n} step {step}"))
                .copied()
                .unwrap_or(0);
            assert!(seen >= 1, "run {n} step {step} never reached the server");
            extra += seen - 1;
        }
        assert!(
            extra <= taken_over,
            "run {n}: {extra} repeated calls but taken over only {taken_over} times"
        );
        repeated += extra;
        takeovers += taken_over;
    }
    println!(
        "chaos: {runs} runs done exactly once in {:.1} s; {kills} SIGKILLs, {stops} SIGSTOPs, \
         {} workers started, {takeovers} takeovers, {repeated} repeated agent calls (of {})",
        began.elapsed().as_secs_f64(),
        started,
        server.prompts.lock().unwrap().len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
