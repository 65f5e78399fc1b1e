//! The queue bound: back-pressure keeps memory bounded and loses nothing; a listener that
//! emits into a full queue gets a limit error.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::{Recorder, int, recorded_hub};
use concerto_emit::{Delivery, EmitHub};
use concerto_vm::Value;
use concerto_vm::host::{EmitSink, HostErrorKind};
use parking_lot::Mutex;

#[test]
fn a_full_queue_is_delivered_by_the_emitting_call() {
    let (hub, rec) = recorded_hub();
    hub.set_delivery(Delivery::Batch { max_batch: 0 });
    hub.set_max_queue(Some(4));
    assert_eq!(hub.max_queue(), Some(4));
    for i in 0..100 {
        hub.emit("n", &int(i)).unwrap();
        assert!(hub.queued() <= 4, "queued {} > 4", hub.queued());
    }
    // Delivered by back-pressure, in four-emit batches.
    assert_eq!(rec.len(), 96);
    hub.flush().unwrap();
    let got: Vec<i64> = rec
        .0
        .lock()
        .iter()
        .map(|(_, v)| v.as_i64().unwrap())
        .collect();
    assert_eq!(got, (0..100).collect::<Vec<_>>(), "nothing lost, in order");
}

#[test]
fn zero_is_taken_as_one() {
    let (hub, rec) = recorded_hub();
    hub.set_delivery(Delivery::Batch { max_batch: 0 });
    hub.set_max_queue(Some(0));
    assert_eq!(hub.max_queue(), Some(1));
    hub.emit("a", &int(1)).unwrap();
    hub.emit("b", &int(2)).unwrap();
    assert_eq!(rec.channels(), ["a"]);
    assert_eq!(hub.queued(), 1);
}

/// Slow listeners, several emitting threads and a flusher: the number of payloads held
/// (queued or being delivered) never exceeds the bound, and every emit arrives.
#[test]
fn memory_stays_bounded_with_slow_listeners_and_concurrent_emitters() {
    const MAX: usize = 8;
    let hub = Arc::new(EmitHub::new());
    let delivered = Arc::new(AtomicUsize::new(0));
    let most_held = Arc::new(AtomicUsize::new(0));
    {
        let weak = Arc::downgrade(&hub);
        let delivered = delivered.clone();
        let most_held = most_held.clone();
        hub.on_prefix(
            "",
            Arc::new(move |_: &str, _: &Value| {
                if let Some(hub) = weak.upgrade() {
                    most_held.fetch_max(hub.queued(), Ordering::AcqRel);
                }
                std::thread::sleep(Duration::from_micros(200));
                delivered.fetch_add(1, Ordering::AcqRel);
            }),
        );
    }
    hub.set_delivery(Delivery::Batch { max_batch: 0 });
    hub.set_max_queue(Some(MAX));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let hub = hub.clone();
            let most_held = most_held.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    hub.emit(&format!("t{t}"), &int(i)).unwrap();
                    most_held.fetch_max(hub.queued(), Ordering::AcqRel);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    hub.flush().unwrap();
    assert_eq!(delivered.load(Ordering::Acquire), 400);
    let most = most_held.load(Ordering::Acquire);
    assert!(most <= MAX, "held {most} payloads with a bound of {MAX}");
    assert_eq!(hub.queued(), 0);
}

#[test]
fn a_listener_emitting_into_a_full_queue_gets_a_limit_error() {
    let hub = Arc::new(EmitHub::new());
    let rec = Recorder::default();
    hub.on_prefix("", rec.listener());
    let results = Arc::new(Mutex::new(Vec::new()));
    {
        let weak = Arc::downgrade(&hub);
        let results = results.clone();
        hub.on(
            "outer",
            Arc::new(move |_: &str, _: &Value| {
                let hub = weak.upgrade().unwrap();
                results.lock().push(hub.emit("inner", &int(1)));
                results.lock().push(hub.emit("inner", &int(2)));
            }),
        );
    }
    hub.set_delivery(Delivery::Batch { max_batch: 0 });
    hub.set_max_queue(Some(2));
    hub.emit("outer", &int(0)).unwrap();
    hub.flush().unwrap();
    let results = results.lock();
    assert!(
        results[0].is_ok(),
        "room for one while `outer` is delivered"
    );
    let err = results[1].as_ref().unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Limit);
    assert!(
        err.message.starts_with("emit queue full: 2 emits pending"),
        "{}",
        err.message
    );
    assert!(err.message.contains("`inner`"), "{}", err.message);
    assert!(err.message.contains("max_emit_queue"), "{}", err.message);
    assert!(
        err.message.contains("set_max_queue, now 2"),
        "{}",
        err.message
    );
    // The accepted one was delivered after `outer`.
    assert_eq!(rec.channels(), ["outer", "inner"]);
}

#[test]
fn immediate_mode_has_no_queue_to_bound() {
    let (hub, rec) = recorded_hub();
    hub.set_max_queue(Some(1));
    for i in 0..10 {
        hub.emit("x", &int(i)).unwrap();
    }
    assert_eq!(rec.len(), 10);
    assert_eq!(hub.queued(), 0);
}
