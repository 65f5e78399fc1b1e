//! Rough throughput of the SQLite store: sequential `set` then `get` (each awaited before
//! the next, as one program does), with `synchronous=FULL` and `NORMAL`, and `set` from
//! concurrent tasks (group commit).
//!
//! `cargo run --release -p concerto-store-sqlite --example throughput [OPS] [DIR]`
#![allow(clippy::print_stdout, reason = "the example reports on stdout")]

use concerto_vm::host::MapId;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use concerto_store_sqlite::{SqliteOptions, SqliteStore, Synchronous};
use concerto_vm::host::{HashmapStore, HostError, MemoryStore, Reply};
use concerto_vm::{Str, Value};

async fn resolve<T>(reply: Reply<Result<T, HostError>>) -> Result<T, HostError> {
    match reply {
        Reply::Ready(r) => r,
        Reply::Pending(fut) => fut.await,
    }
}

fn open(dir: &Path, name: &str, synchronous: Synchronous) -> Result<SqliteStore, HostError> {
    let path = dir.join(name);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    SqliteStore::open_with(
        &path,
        vec!["bench".to_string()],
        SqliteOptions {
            synchronous,
            ..SqliteOptions::default()
        },
    )
}

fn rate(ops: usize, started: Instant) -> String {
    format!(
        "{:>9.0} ops/s",
        ops as f64 / started.elapsed().as_secs_f64()
    )
}

async fn sequential(store: &dyn MemoryStore, label: &str, ops: usize) -> Result<(), HostError> {
    let started = Instant::now();
    for i in 0..ops {
        let key = Str::from(format!("k{}", i % 1000));
        resolve(store.hashmap_set(MapId(0), key, Value::Int(i as i64))).await?;
    }
    println!("{label:<28} set {}", rate(ops, started));
    let started = Instant::now();
    for i in 0..ops {
        let key = format!("k{}", i % 1000);
        resolve(store.hashmap_get(MapId(0), &key)).await?;
    }
    println!("{label:<28} get {}", rate(ops, started));
    Ok(())
}

async fn concurrent(store: Arc<SqliteStore>, tasks: usize, ops: usize) -> Result<(), HostError> {
    let before = store.stats();
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..ops / tasks {
                let key = Str::from(format!("t{t}-{}", i % 1000));
                resolve(store.hashmap_set(MapId(0), key, Value::Int(i as i64))).await?;
            }
            Ok::<(), HostError>(())
        }));
    }
    for handle in handles {
        handle
            .await
            .map_err(|e| HostError::failed(e.to_string()))??;
    }
    let after = store.stats();
    println!(
        "{:<28} set {} ({} operations in {} transactions)",
        format!("sqlite FULL, {tasks} tasks"),
        rate(ops, started),
        after.operations - before.operations,
        after.transactions - before.transactions
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let ops: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_000);
    let dir = match args.next() {
        Some(d) => std::path::PathBuf::from(d),
        None => std::env::temp_dir(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()?;
    rt.block_on(async {
        let memory = concerto_memory::InMemoryStore::with_names(["bench"]);
        sequential(&memory, "in-memory", ops).await?;
        let full = open(&dir, "bench-full.db", Synchronous::Full)?;
        sequential(&full, "sqlite FULL", ops).await?;
        let normal = open(&dir, "bench-normal.db", Synchronous::Normal)?;
        sequential(&normal, "sqlite NORMAL", ops).await?;
        concurrent(Arc::new(full), 8, ops).await?;
        Ok::<(), HostError>(())
    })?;
    Ok(())
}
