//! Copies of payloads taken when an emit is queued.
//!
//! Arrays, maps and struct fields are shared and mutable in the VM: a batched emit that
//! only kept a reference would show the program's later changes when it is finally
//! delivered. [`snapshot`] copies the mutable parts at emit time, so a queued emit carries
//! the value as it was when the program emitted it, as an immediate emit would.

use std::collections::HashMap;
use std::sync::Arc;

use concerto_vm::{Array, EnumObj, Map, MapInner, Payload, StructObj, Value};

/// Nesting levels copied; deeper parts are shared with the original. The VM's display and
/// JSON conversion stop at the same depth (they print `...` below it), so sinks see the same
/// text either way, and copying stays bounded for values nested millions deep.
pub(crate) const MAX_COPY_DEPTH: usize = 128;

/// A copy of `value` that later changes to the original do not affect (up to
/// [`MAX_COPY_DEPTH`] levels). Sharing and cycles are preserved: every shared container is
/// copied once, so the copy costs time linear in the size of the value.
pub(crate) fn snapshot(value: &Value) -> Value {
    if !value.is_compound() {
        return value.clone();
    }
    Copier::default().copy(value, 0)
}

#[derive(Default)]
struct Copier {
    /// Containers already copied, by the address of the original.
    done: HashMap<usize, Value>,
}

impl Copier {
    fn copy(&mut self, value: &Value, depth: usize) -> Value {
        if !value.is_compound() || depth > MAX_COPY_DEPTH {
            return value.clone();
        }
        let key = address(value);
        if let Some(copy) = self.done.get(&key) {
            return copy.clone();
        }
        match value {
            Value::Array(a) => {
                let out = Array::new(Vec::new());
                self.done.insert(key, Value::Array(out.clone()));
                let items: Vec<Value> =
                    a.to_vec().iter().map(|v| self.copy(v, depth + 1)).collect();
                *out.0.lock() = items;
                Value::Array(out)
            }
            Value::Map(m) => {
                let out = Map::new(MapInner::default());
                self.done.insert(key, Value::Map(out.clone()));
                let mut inner = MapInner::default();
                for (k, v) in m.entries() {
                    let v = self.copy(&v, depth + 1);
                    inner.insert(k, v);
                }
                *out.0.lock() = inner;
                Value::Map(out)
            }
            Value::Struct(s) => {
                let out = StructObj::new(s.ty.clone(), Vec::new());
                self.done.insert(key, Value::Struct(out.clone()));
                let fields = s.fields.lock().clone();
                let fields: Vec<Value> = fields.iter().map(|v| self.copy(v, depth + 1)).collect();
                *out.fields.lock() = fields;
                Value::Struct(out)
            }
            Value::Enum(e) => {
                // Immutable itself; only what it holds may change.
                let payload = e.payload.iter().map(|v| self.copy(v, depth + 1)).collect();
                let out = Value::Enum(Arc::new(EnumObj {
                    type_name: e.type_name.clone(),
                    variant: e.variant.clone(),
                    type_id: e.type_id,
                    variant_id: e.variant_id,
                    field_names: e.field_names.clone(),
                    payload,
                }));
                self.done.insert(key, out.clone());
                out
            }
            Value::Ok(p) => {
                let out = Value::Ok(Payload::new(self.copy(p, depth + 1)));
                self.done.insert(key, out.clone());
                out
            }
            Value::Err(p) => {
                let out = Value::Err(Payload::new(self.copy(p, depth + 1)));
                self.done.insert(key, out.clone());
                out
            }
            Value::Some(p) => {
                let out = Value::Some(Payload::new(self.copy(p, depth + 1)));
                self.done.insert(key, out.clone());
                out
            }
            other => other.clone(),
        }
    }
}

/// The address of a shared value's allocation (0 for inline values, which are never
/// looked up).
fn address(value: &Value) -> usize {
    match value {
        Value::Array(a) => Arc::as_ptr(&a.0) as usize,
        Value::Map(m) => Arc::as_ptr(&m.0) as usize,
        Value::Struct(s) => Arc::as_ptr(s) as usize,
        Value::Enum(e) => Arc::as_ptr(e) as usize,
        Value::Ok(p) | Value::Err(p) | Value::Some(p) => Arc::as_ptr(p) as usize,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_independent_of_later_changes() {
        let inner = Array::new(vec![Value::Int(1)]);
        let outer = Value::map([("xs", Value::Array(inner.clone()))]);
        let copy = snapshot(&outer);
        inner.0.lock().push(Value::Int(2));
        assert_eq!(copy.to_json(), serde_json::json!({"xs": [1]}));
        assert_eq!(outer.to_json(), serde_json::json!({"xs": [1, 2]}));
    }

    #[test]
    fn shared_children_are_copied_once_and_cycles_survive() {
        let a = Array::new(Vec::new());
        a.0.lock().push(Value::Array(a.clone()));
        a.0.lock().push(Value::Array(a.clone()));
        let copy = snapshot(&Value::Array(a.clone()));
        let Value::Array(c) = &copy else {
            panic!("not an array")
        };
        assert!(!Arc::ptr_eq(&c.0, &a.0));
        for item in c.to_vec() {
            let Value::Array(child) = item else {
                panic!("not an array")
            };
            assert!(Arc::ptr_eq(&child.0, &c.0), "the cycle points at the copy");
        }
        // Break the cycles so the test does not leak.
        c.0.lock().clear();
        a.0.lock().clear();
    }
}
