//! Immediate and batch delivery: order, automatic and explicit flushes, concurrency,
//! payload copies, sink errors and listener panics.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::common::{SharedBuf, int, recorded_hub};
use concerto_emit::{Delivery, EmitHub, FlushSink, JsonLinesSink};
use concerto_vm::host::{EmitSink, HostError, HostErrorKind};
use concerto_vm::{Array, Value};

#[test]
fn immediate_mode_delivers_inside_emit() {
    let (hub, rec) = recorded_hub();
    assert_eq!(hub.delivery(), Delivery::Immediate);
    hub.emit("a", &int(1)).unwrap();
    assert_eq!(rec.channels(), ["a"]);
    assert_eq!(hub.queued(), 0);
}

#[test]
fn batch_mode_queues_until_flush_and_keeps_order_across_flushes() {
    let (hub, rec) = recorded_hub();
    hub.set_delivery(Delivery::Batch { max_batch: 0 });
    hub.emit("a", &int(1)).unwrap();
    hub.emit("b", &int(2)).unwrap();
    assert_eq!(rec.len(), 0, "nothing is delivered before a flush");
    assert_eq!(hub.queued(), 2);
    hub.flush().unwrap();
    assert_eq!(rec.channels(), ["a", "b"]);
    hub.emit("c", &int(3)).unwrap();
    hub.emit("d", &int(4)).unwrap();
    hub.flush().unwrap();
    assert_eq!(rec.channels(), ["a", "b", "c", "d"]);
    assert_eq!(hub.queued(), 0);
    // A flush with nothing queued is harmless.
    hub.flush().unwrap();
    assert_eq!(rec.len(), 4);
}

#[test]
fn batch_mode_delivers_when_max_batch_is_reached() {
    let (hub, rec) = recorded_hub();
    hub.set_delivery(Delivery::Batch { max_batch: 3 });
    hub.emit("a", &int(1)).unwrap();
    hub.emit("b", &int(2)).unwrap();
    assert_eq!(rec.len(), 0);
    hub.emit("c", &int(3)).unwrap();
    assert_eq!(
        rec.channels(),
        ["a", "b", "c"],
        "the third emit delivers the batch"
    );
    assert_eq!(hub.queued(), 0);
    hub.emit("d", &int(4)).unwrap();
    assert_eq!(hub.queued(), 1);
}

#[test]
fn batched_payloads_are_copied_at_emit_time() {
    let (hub, rec) = recorded_hub();
    hub.set_delivery(Delivery::Batch { max_batch: 0 });
    let items = Array::new(vec![int(1)]);
    let payload = Value::map([("items", Value::Array(items.clone()))]);
    hub.emit("snap", &payload).unwrap();
    items.0.lock().push(int(2));
    hub.flush().unwrap();
    assert_eq!(
        rec.0.lock()[0].1,
        serde_json::json!({"items": [1]}),
        "the program's later change is not visible in the queued emit"
    );
}

#[test]
fn switching_to_immediate_delivers_the_queue_first() {
    let (hub, rec) = recorded_hub();
    hub.set_delivery(Delivery::Batch { max_batch: 0 });
    hub.emit("queued", &int(1)).unwrap();
    hub.set_delivery(Delivery::Immediate);
    hub.emit("now", &int(2)).unwrap();
    assert_eq!(rec.channels(), ["queued", "now"]);
    assert_eq!(hub.queued(), 0);
}

#[test]
fn batch_mode_writes_json_lines_on_flush() {
    let hub = EmitHub::new();
    let buf = SharedBuf::default();
    hub.add_sink(Arc::new(JsonLinesSink::new(buf.clone())));
    hub.set_delivery(Delivery::Batch { max_batch: 0 });
    hub.emit("a", &int(1)).unwrap();
    hub.emit("b", &Value::str("x")).unwrap();
    assert_eq!(buf.text(), "");
    hub.flush().unwrap();
    assert_eq!(
        buf.text(),
        "{\"channel\":\"a\",\"payload\":1}\n{\"channel\":\"b\",\"payload\":\"x\"}\n"
    );
}

/// Many threads emit while others flush: every emit arrives exactly once, and each
/// thread's emits arrive in the order it made them.
#[test]
fn concurrent_emits_and_flushes_deliver_exactly_once_in_order() {
    const THREADS: i64 = 6;
    const PER_THREAD: i64 = 400;
    let (hub, rec) = recorded_hub();
    hub.set_delivery(Delivery::Batch { max_batch: 7 });
    let done = Arc::new(AtomicBool::new(false));
    let flushes = Arc::new(AtomicUsize::new(0));
    let flushers: Vec<_> = (0..2)
        .map(|_| {
            let hub = hub.clone();
            let done = done.clone();
            let flushes = flushes.clone();
            std::thread::spawn(move || {
                while !done.load(Ordering::Acquire) {
                    hub.flush().unwrap();
                    flushes.fetch_add(1, Ordering::Relaxed);
                    std::thread::yield_now();
                }
            })
        })
        .collect();
    let producers: Vec<_> = (0..THREADS)
        .map(|t| {
            let hub = hub.clone();
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    hub.emit(&format!("t{t}"), &Value::array(vec![int(t), int(i)]))
                        .unwrap();
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    done.store(true, Ordering::Release);
    for f in flushers {
        f.join().unwrap();
    }
    hub.flush().unwrap();
    assert!(flushes.load(Ordering::Relaxed) > 0);
    let seen = rec.0.lock().clone();
    assert_eq!(
        seen.len() as i64,
        THREADS * PER_THREAD,
        "no loss, no duplicates"
    );
    let mut next: HashMap<i64, i64> = HashMap::new();
    for (channel, payload) in seen {
        let t = payload[0].as_i64().unwrap();
        let i = payload[1].as_i64().unwrap();
        assert_eq!(channel, format!("t{t}"));
        let expected = next.entry(t).or_insert(0);
        assert_eq!(i, *expected, "thread {t}: emits arrive once, in order");
        *expected += 1;
    }
    assert_eq!(hub.queued(), 0);
    assert_eq!(hub.emit_count(), (THREADS * PER_THREAD) as u64);
}

/// A sink that fails on one channel.
struct FailOn {
    channel: &'static str,
    failing: AtomicBool,
}

impl EmitSink for FailOn {
    fn emit(&self, channel: &str, _payload: &Value) -> Result<(), HostError> {
        if channel == self.channel && self.failing.load(Ordering::Acquire) {
            return Err(HostError::failed("cannot write emit: disk full"));
        }
        Ok(())
    }
}

impl FlushSink for FailOn {
    fn flush(&self) -> Result<(), HostError> {
        Ok(())
    }
}

#[test]
fn a_sink_error_in_batch_mode_names_the_channel_and_keeps_the_rest_queued() {
    let (hub, rec) = recorded_hub();
    let sink = Arc::new(FailOn {
        channel: "b",
        failing: AtomicBool::new(true),
    });
    hub.add_sink(sink.clone());
    hub.set_delivery(Delivery::Batch { max_batch: 0 });
    for ch in ["a", "b", "c", "d"] {
        hub.emit(ch, &int(0)).unwrap();
    }
    let err = hub.flush().unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Failed);
    assert!(err.message.contains("`b`"), "{}", err.message);
    assert!(err.message.contains("disk full"), "{}", err.message);
    assert_eq!(rec.channels(), ["a"]);
    assert_eq!(hub.queued(), 2, "c and d wait for the next flush");
    hub.emit("e", &int(0)).unwrap();
    sink.failing.store(false, Ordering::Release);
    hub.flush().unwrap();
    assert_eq!(rec.channels(), ["a", "c", "d", "e"]);
}

#[test]
fn a_sink_error_in_immediate_mode_is_returned() {
    let hub = EmitHub::new();
    hub.add_sink(Arc::new(FailOn {
        channel: "x",
        failing: AtomicBool::new(true),
    }));
    let err = hub.emit("x", &int(1)).unwrap_err();
    assert!(err.message.contains("`x`") && err.message.contains("disk full"));
}

#[test]
fn a_panicking_listener_does_not_stop_batch_delivery() {
    let (hub, rec) = recorded_hub();
    hub.on(
        "boom",
        Arc::new(|_: &str, _: &Value| panic!("listener exploded")),
    );
    hub.set_delivery(Delivery::Batch { max_batch: 2 });
    hub.emit("ok1", &int(1)).unwrap();
    hub.emit("boom", &int(2)).unwrap();
    hub.emit("ok2", &int(3)).unwrap();
    hub.flush().unwrap();
    assert_eq!(rec.channels(), ["ok1", "boom", "ok2"]);
    assert_eq!(hub.listener_panic_count(), 1);
    let panics = hub.listener_panics();
    assert_eq!(panics.len(), 1);
    assert!(panics[0].contains("`boom`") && panics[0].contains("listener exploded"));
    // The hub still works afterwards.
    hub.emit("later", &int(4)).unwrap();
    hub.flush().unwrap();
    assert_eq!(rec.len(), 4);
}

#[test]
fn a_panicking_listener_does_not_stop_immediate_delivery() {
    let (hub, rec) = recorded_hub();
    hub.on("boom", Arc::new(|_: &str, _: &Value| panic!("nope")));
    hub.emit("boom", &int(1)).unwrap();
    hub.emit("after", &int(2)).unwrap();
    assert_eq!(rec.channels(), ["boom", "after"]);
    assert_eq!(hub.listener_panics().len(), 1);
}

#[test]
fn listeners_may_emit_and_flush_during_batch_delivery() {
    let hub = Arc::new(EmitHub::new());
    let rec = crate::common::Recorder::default();
    hub.on_prefix("", rec.listener());
    let weak = Arc::downgrade(&hub);
    hub.on(
        "outer",
        Arc::new(move |_: &str, _: &Value| {
            let hub = weak.upgrade().unwrap();
            hub.emit("inner", &int(1)).unwrap();
            // Re-entrant flush returns at once instead of deadlocking.
            hub.flush().unwrap();
        }),
    );
    hub.set_delivery(Delivery::Batch { max_batch: 0 });
    hub.emit("outer", &int(0)).unwrap();
    hub.emit("next", &int(0)).unwrap();
    hub.flush().unwrap();
    assert_eq!(rec.channels(), ["outer", "next", "inner"]);
    assert_eq!(hub.queued(), 0);
}

#[test]
fn listeners_see_channel_and_prefix_filters() {
    let hub = EmitHub::new();
    let exact = crate::common::Recorder::default();
    let prefix = crate::common::Recorder::default();
    hub.on("pipeline:done", exact.listener());
    hub.on_prefix("pipeline:", prefix.listener());
    hub.set_delivery(Delivery::Batch { max_batch: 0 });
    for ch in ["pipeline:start", "pipeline:done", "log"] {
        hub.emit(ch, &Value::Nil).unwrap();
    }
    hub.flush().unwrap();
    assert_eq!(exact.channels(), ["pipeline:done"]);
    assert_eq!(prefix.channels(), ["pipeline:start", "pipeline:done"]);
}
