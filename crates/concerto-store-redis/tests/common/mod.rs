//! Helpers shared by the integration tests: a real `redis-server` on a free loopback port
//! (`server`), and a tiny executor for the store's replies.
#![allow(dead_code)]

mod server;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use concerto_vm::host::Reply;
use concerto_vm::{Str, Value};

#[allow(unused_imports)]
pub(crate) use server::{RedisServer, free_port};

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on this thread (no tokio runtime: the store must work
/// under any executor). Fails the test after 60 s.
pub(crate) fn block_on<F: Future>(fut: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "a store operation took over 60 s"
        );
        thread::park_timeout(Duration::from_millis(100));
    }
}

/// The result of a reply, waiting for it if needed.
pub(crate) fn wait<T>(reply: Reply<T>) -> T {
    match reply {
        Reply::Ready(v) => v,
        Reply::Pending(fut) => block_on(fut),
    }
}

pub(crate) fn s(text: &str) -> Str {
    Str::from(text)
}

/// A comparable form of a value (the lossless encoding: tells Int from Float, keeps map
/// order, NaN equal to NaN).
pub(crate) fn enc(value: &Value) -> serde_json::Value {
    concerto_memory::encode_value(value).expect("encodable value")
}

/// Comparable entries.
pub(crate) fn enc_entries(entries: &[(Str, Value)]) -> Vec<(String, serde_json::Value)> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), enc(v)))
        .collect()
}

/// Polls `cond` until it holds or `timeout` passes; whether it held.
pub(crate) fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// A 64-bit linear congruential generator (Knuth's MMIX constants).
pub(crate) struct Lcg(pub(crate) u64);

impl Lcg {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Runs a raw command on the server (for inspecting the key layout), with the client's
/// blocking connection.
pub(crate) fn raw_command(url: &str, args: &[&str]) -> redis::Value {
    let client = redis::Client::open(url).expect("client");
    let mut conn = client.get_connection().expect("connection");
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query::<redis::Value>(&mut conn).expect("command")
}
