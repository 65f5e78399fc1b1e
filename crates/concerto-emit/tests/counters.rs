//! `emit_count()` and `queued()` are exact under concurrency.

use std::sync::Arc;

use crate::common::{int, recorded_hub};
use concerto_emit::{AwaitHandler, Delivery, EmitHub};
use concerto_vm::Value;
use concerto_vm::host::EmitSink;

#[test]
fn queued_and_emit_count_are_exact_with_many_threads() {
    let (hub, rec) = recorded_hub();
    hub.set_delivery(Delivery::Batch { max_batch: 0 });
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let hub = hub.clone();
            std::thread::spawn(move || {
                for i in 0..250 {
                    hub.emit(&format!("t{t}"), &int(i)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(hub.queued(), 2000);
    assert_eq!(hub.emit_count(), 2000);
    hub.flush().unwrap();
    assert_eq!(hub.queued(), 0);
    assert_eq!(rec.len(), 2000);
    assert_eq!(hub.emit_count(), 2000, "a flush is not an emit");
}

#[test]
fn immediate_emits_are_counted_from_many_threads() {
    let hub = Arc::new(EmitHub::new());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let hub = hub.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    hub.emit("x", &int(i)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(hub.emit_count(), 2000);
    assert_eq!(hub.queued(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awaits_count_too_even_when_they_fail() {
    let hub = Arc::new(EmitHub::new());
    let echo: AwaitHandler = Arc::new(|v: Value| Box::pin(async move { Ok(v) }));
    hub.on_emit("ask", echo);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let hub = hub.clone();
        tasks.push(tokio::spawn(async move {
            hub.emit("plain", &int(i)).unwrap();
            hub.emit_await("ask", int(i)).await.unwrap();
            assert!(hub.emit_await("nobody", int(i)).await.is_err());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(hub.emit_count(), 150);
}
