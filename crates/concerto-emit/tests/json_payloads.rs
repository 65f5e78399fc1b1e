//! Payloads JSON cannot represent as they are: non-finite floats, deep nesting, cycles.
//! Serialising them never panics and always gives one line of valid text.

use std::sync::Arc;

use crate::common::{SharedBuf, int};
use concerto_emit::{Delivery, EmitHub, JsonLinesSink, TextSink};
use concerto_vm::host::EmitSink;
use concerto_vm::{Array, Value};

#[test]
fn non_finite_floats_become_null() {
    for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert_eq!(
            JsonLinesSink::line("m", &Value::Float(f)),
            "{\"channel\":\"m\",\"payload\":null}"
        );
    }
    let nested = Value::map([
        ("ok", Value::Float(0.5)),
        ("bad", Value::Float(f64::NAN)),
        ("list", Value::array(vec![Value::Float(f64::INFINITY)])),
    ]);
    let line = JsonLinesSink::line("m", &nested);
    let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        parsed,
        serde_json::json!({"channel": "m", "payload": {"ok": 0.5, "bad": null, "list": [null]}})
    );
}

fn nested_arrays(depth: usize) -> Value {
    let mut v = int(1);
    for _ in 0..depth {
        v = Value::array(vec![v]);
    }
    v
}

#[test]
fn deep_nesting_is_cut_off_instead_of_overflowing() {
    let deep = nested_arrays(100_000);
    let line = JsonLinesSink::line("deep", &deep);
    assert!(line.starts_with("{\"channel\":\"deep\",\"payload\":[[[["));
    assert!(line.contains("\"...\""), "the cut-off is marked");
    assert!(line.len() < 1_000, "bounded: {} bytes", line.len());
    let mut x = int(0);
    for _ in 0..100_000 {
        x = Value::some(x);
    }
    let line = JsonLinesSink::line("opt", &x);
    assert!(line.contains("\"...\""));
}

#[test]
fn a_cyclic_payload_is_written_without_hanging() {
    let a = Array::new(vec![int(1)]);
    a.0.lock().push(Value::Array(a.clone()));
    let line = JsonLinesSink::line("cycle", &Value::Array(a.clone()));
    assert!(line.contains("\"...\""));
    a.0.lock().clear();
}

/// The same payloads through the hub in batch mode (queued copies) and both sinks.
#[test]
fn odd_payloads_go_through_a_batched_hub() {
    let hub = EmitHub::new();
    let json = SharedBuf::default();
    let text = SharedBuf::default();
    hub.add_sink(Arc::new(JsonLinesSink::new(json.clone())));
    hub.add_sink(Arc::new(TextSink::new(text.clone())));
    hub.set_delivery(Delivery::Batch { max_batch: 0 });
    let cycle = Array::new(Vec::new());
    cycle.0.lock().push(Value::Array(cycle.clone()));
    hub.emit("nan", &Value::Float(f64::NAN)).unwrap();
    hub.emit("deep", &nested_arrays(50_000)).unwrap();
    hub.emit("cycle", &Value::Array(cycle.clone())).unwrap();
    hub.flush().unwrap();
    let out = json.text();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0], "{\"channel\":\"nan\",\"payload\":null}");
    assert!(lines[1].contains("\"...\"") && lines[2].contains("\"...\""));
    assert_eq!(text.text().lines().count(), 3);
    cycle.0.lock().clear();
}
