//! `cargo xtask bench --filter queue`: runs per second through the Redis queue with 1, 2 and
//! 4 worker processes of the release binary, each of concurrency 8, on a real
//! `redis-server`, the runs answered by the built-in mock provider after 50 ms per agent
//! call (`--mock --mock-latency-ms 50`). The program is `tests/queue/chaos.head.conc-ir`:
//! three agent calls and three hashmap updates per run, journaled. All runs are submitted
//! first; the clock runs from the workers' start until the queue counts every run done.
//! Each worker count is measured `rounds` times, alternating; the table gives medians.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Runs per measurement.
const RUNS: usize = 240;
/// Concurrency of each worker.
const CONCURRENCY: usize = 8;

struct Redis {
    child: Child,
    url: String,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis() -> Result<Redis> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("the queue benchmark needs redis-server (apt-get install redis-server)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("redis-server did not start");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Redis {
        child,
        url: format!("redis://127.0.0.1:{port}/0"),
    })
}

fn stats(bin: &Path, queue: &str) -> Result<serde_json::Value> {
    let out = Command::new(bin)
        .args(["queue", "stats", "--json", "--queue", queue])
        .output()?;
    if !out.status.success() {
        bail!("queue stats: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// One measurement: runs per second with `workers` workers.
fn measure(bin: &Path, program: &Path, workers: usize, round: usize) -> Result<f64> {
    let redis = redis()?;
    let queue = format!("{}/bench{workers}r{round}", redis.url);
    for n in 0..RUNS {
        let out = Command::new(bin)
            .arg("submit")
            .arg(program)
            .args(["--queue", &queue, "--var", &format!("RUN_N={n}")])
            .output()?;
        if !out.status.success() {
            bail!("submit: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let began = Instant::now();
    let mut pool: Vec<Child> = (0..workers)
        .map(|i| {
            Command::new(bin)
                .args(["worker", "--queue", &queue, "--name", &format!("b{i}")])
                .args(["--concurrency", &CONCURRENCY.to_string()])
                .args(["--mock", "--mock-latency-ms", "50", "--allow-env", "RUN_N"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let elapsed = loop {
        let now = stats(bin, &queue)?;
        if now["done"].as_u64() == Some(RUNS as u64) {
            break began.elapsed().as_secs_f64();
        }
        if now["failed"].as_u64().unwrap_or(0) > 0 || now["dead"].as_u64().unwrap_or(0) > 0 {
            bail!("runs failed in the benchmark: {now}");
        }
        if Instant::now() > deadline {
            bail!("the benchmark's runs did not finish: {now}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    for w in &mut pool {
        let _ = w.kill();
        let _ = w.wait();
    }
    Ok(RUNS as f64 / elapsed)
}

pub(crate) fn run(bin: &Path, rounds: usize) -> Result<()> {
    let program = crate::root().join("tests/queue/chaos.head.conc-ir");
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "\nqueue: {RUNS} runs (3 agent calls answered after 50 ms, 3 hashmap updates, journaled) \
         through redis-server; workers of concurrency {CONCURRENCY}; {cores} cores; median of \
         {rounds} rounds"
    );
    let counts = [1usize, 2, 4];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); counts.len()];
    for round in 0..rounds {
        for (i, &workers) in counts.iter().enumerate() {
            samples[i].push(measure(bin, &program, workers, round)?);
        }
    }
    let base = crate::bench::median(&mut samples[0].clone());
    for (i, &workers) in counts.iter().enumerate() {
        let m = crate::bench::median(&mut samples[i]);
        println!(
            "  {workers} worker{}  {m:>7.1} runs/s  ({:.2}x one worker; ideal with 50 ms calls \
             and {} runs in flight: {:.1} runs/s)",
            if workers == 1 { " " } else { "s" },
            m / base,
            workers * CONCURRENCY,
            (workers * CONCURRENCY) as f64 / 0.150
        );
    }
    Ok(())
}
