//! Rough throughput of the Redis store: hashmap `set` and `get`, from one client and from
//! several clients at once (each its own `RedisStore`, as separate runtimes would be).
//!
//! ```text
//! cargo run --release -p concerto-store-redis --example bench [-- OPS [CLIENTS]]
//! ```
//!
//! Uses the server at `$CONCERTO_REDIS_URL` when set; otherwise starts a `redis-server` on a
//! free loopback port (and stops it at the end).
#![allow(clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use concerto_vm::host::MapId;
use std::time::Instant;

use common::{RedisServer, s, wait};
use concerto_store_redis::RedisStore;
use concerto_vm::Value;
use concerto_vm::host::HashmapStore;

fn main() {
    let mut args = std::env::args().skip(1);
    let ops: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let clients: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    let (_server, url) = match std::env::var("CONCERTO_REDIS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let server = RedisServer::start();
            let url = server.url();
            (Some(server), url)
        }
    };
    let names = vec!["bench".to_string()];

    // One client: each operation awaited before the next (as a program does).
    let store = RedisStore::connect(&url, "bench-one", names.clone()).expect("connect");
    let started = Instant::now();
    for i in 0..ops {
        wait(store.hashmap_set(MapId(0), s(&format!("k{i}")), Value::Int(i as i64))).unwrap();
    }
    let set_rate = ops as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for i in 0..ops {
        assert!(
            wait(store.hashmap_get(MapId(0), &format!("k{i}")))
                .unwrap()
                .is_some()
        );
    }
    let get_rate = ops as f64 / started.elapsed().as_secs_f64();
    println!("1 client:  set {set_rate:>9.0} ops/s   get {get_rate:>9.0} ops/s   ({ops} each)");
    drop(store);

    // Several clients at once, each with its own store, its own share of the keys.
    let stores: Vec<RedisStore> = (0..clients)
        .map(|_| RedisStore::connect(&url, "bench-many", names.clone()).expect("connect"))
        .collect();
    let per = ops / clients;
    let run = |phase: &str| {
        let started = Instant::now();
        std::thread::scope(|scope| {
            for (c, store) in stores.iter().enumerate() {
                scope.spawn(move || {
                    for i in 0..per {
                        let key = format!("c{c}:k{i}");
                        if phase == "set" {
                            wait(store.hashmap_set(MapId(0), s(&key), Value::Int(i as i64)))
                                .unwrap();
                        } else {
                            assert!(wait(store.hashmap_get(MapId(0), &key)).unwrap().is_some());
                        }
                    }
                });
            }
        });
        (per * clients) as f64 / started.elapsed().as_secs_f64()
    };
    let set_rate = run("set");
    let get_rate = run("get");
    println!(
        "{clients} clients: set {set_rate:>9.0} ops/s   get {get_rate:>9.0} ops/s   ({} each, total)",
        per * clients
    );
}
