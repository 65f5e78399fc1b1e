//! The host `Value` and the interpreter's value serialise to the same JSON, so a host
//! listener and the JSON-lines sink see the same payloads.

use concerto_runtime::Value;
use concerto_runtime::vm::Value as V;

fn samples() -> Vec<V> {
    vec![
        V::Nil,
        V::Int(-3),
        V::Float(2.0),
        V::Float(f64::NAN),
        V::str("ok"),
        V::array(vec![V::Int(1), V::str("a"), V::None]),
        V::map([("b", V::Bool(true)), ("a", V::Float(0.5))]),
        V::record("Point", vec![("x", V::Int(1)), ("y", V::Int(2))]),
        V::ok(V::some(V::Int(1))),
        V::err(V::record("ToolError", vec![("message", V::str("boom"))])),
        V::None,
    ]
}

#[test]
fn host_and_interpreter_json_agree() {
    for v in samples() {
        let host = Value::from(&v);
        assert_eq!(host.to_json(), v.to_json(), "{v:?}");
        // And the round trip through the host form keeps the JSON.
        assert_eq!(V::from(&host).to_json(), v.to_json(), "{v:?}");
    }
}

#[test]
fn get_string_reads_struct_and_map_fields() {
    let v = Value::from(&V::map([("path", V::str("/tmp/x"))]));
    assert_eq!(v.get_string("path").unwrap(), "/tmp/x");
    assert!(v.get_string("missing").is_err());
    let v = Value::from(&V::record("Req", vec![("path", V::Int(3))]));
    assert!(v.get_string("path").is_err());
}
