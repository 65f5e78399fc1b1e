//! The deterministic size estimate behind the hashmap memory limit.
//!
//! ```text
//! size(entry)                          = len(key) + size(value)
//! size(nil | bool | int | float)       = 16
//! size(None | function | reference)    = 16
//! size(string)                         = 16 + len(text in UTF-8 bytes)
//! size(array)                          = 16 + Σ size(item)
//! size(map)                            = 16 + Σ (16 + len(key) + size(value))
//! size(struct)                         = 16 + Σ size(field value)
//! size(enum variant)                   = 16 + Σ size(payload value)
//! size(Ok x | Err x | Some x)          = 16 + size(x)
//! size(native object)                  = 16
//! ```
//!
//! 16 bytes is the size of one value slot. A container (array, map, struct, enum variant,
//! `Ok`/`Err`/`Some` payload) that is reachable more than once from the same value is counted
//! once; every further reference to it costs 16 (its slot). So a cyclic value has a finite
//! size, and a value that shares one sub-value many times is not counted many times. The
//! result does not depend on the order of traversal (each distinct container is counted
//! exactly once), so it is deterministic. Sums saturate at `usize::MAX`.

use concerto_vm::Value;
use rustc_hash::FxHashSet;

/// The size of one value slot.
pub(crate) const SLOT: usize = 16;

/// The estimated size of `value` in bytes (see the module documentation for the formula).
///
/// The walk is iterative, so values nested arbitrarily deep are measured without
/// recursion.
#[inline]
pub fn value_size(value: &Value) -> usize {
    // Scalars and strings (most hashmap values): no walk, no visited set.
    match value {
        Value::Str(s) | Value::Path(s) => SLOT.saturating_add(s.len()),
        v if !v.is_compound() => SLOT,
        v => container_size(v),
    }
}

/// [`value_size`] of a container: the walk.
fn container_size(value: &Value) -> usize {
    let mut total = 0usize;
    let mut seen: FxHashSet<usize> = FxHashSet::default();
    let mut stack: Vec<Value> = Vec::new();
    measure(value, &mut total, &mut seen, &mut stack);
    while let Some(v) = stack.pop() {
        measure(&v, &mut total, &mut seen, &mut stack);
    }
    total
}

/// The estimated size of one hashmap entry: key bytes plus the value's size.
#[inline]
pub fn entry_size(key: &str, value: &Value) -> usize {
    key.len().saturating_add(value_size(value))
}

/// Adds the value's own cost to `total` and queues its children. A container already seen
/// costs only its slot.
fn measure(v: &Value, total: &mut usize, seen: &mut FxHashSet<usize>, stack: &mut Vec<Value>) {
    let add = |total: &mut usize, n: usize| *total = total.saturating_add(n);
    // Identity of the shared allocation behind a container.
    let id = match v {
        Value::Array(a) => Some(std::sync::Arc::as_ptr(&a.0) as *const () as usize),
        Value::Map(m) => Some(std::sync::Arc::as_ptr(&m.0) as *const () as usize),
        Value::Struct(s) => Some(std::sync::Arc::as_ptr(s) as *const () as usize),
        Value::Enum(e) => Some(std::sync::Arc::as_ptr(e) as *const () as usize),
        Value::Ok(p) | Value::Err(p) | Value::Some(p) => {
            Some(std::sync::Arc::as_ptr(p) as *const () as usize)
        }
        _ => None,
    };
    add(total, SLOT);
    if let Some(id) = id
        && !seen.insert(id)
    {
        return;
    }
    match v {
        Value::Str(s) | Value::Path(s) => add(total, s.len()),
        Value::Array(a) => {
            let items = a.0.lock();
            for item in items.iter() {
                leaf_or_push(item, total, stack);
            }
        }
        Value::Map(m) => {
            let entries = m.0.lock();
            for (k, item) in entries.iter() {
                add(total, SLOT.saturating_add(k.len()));
                leaf_or_push(item, total, stack);
            }
        }
        Value::Struct(s) => {
            let fields = s.fields.lock();
            for item in fields.iter() {
                leaf_or_push(item, total, stack);
            }
        }
        Value::Enum(e) => {
            for item in &e.payload {
                leaf_or_push(item, total, stack);
            }
        }
        Value::Ok(p) | Value::Err(p) | Value::Some(p) => leaf_or_push(p, total, stack),
        _ => {}
    }
}

/// Counts a scalar or string at once; queues a container (a cheap handle clone).
fn leaf_or_push(item: &Value, total: &mut usize, stack: &mut Vec<Value>) {
    match item {
        Value::Str(s) | Value::Path(s) => *total = total.saturating_add(SLOT + s.len()),
        v if v.is_compound() => stack.push(v.clone()),
        _ => *total = total.saturating_add(SLOT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concerto_vm::Array;

    #[test]
    fn scalars_strings_and_containers_follow_the_formula() {
        assert_eq!(value_size(&Value::Int(7)), 16);
        assert_eq!(value_size(&Value::Nil), 16);
        assert_eq!(value_size(&Value::str("abc")), 19);
        // 16 + (16 + 1) + 16
        assert_eq!(
            value_size(&Value::array(vec![Value::str("x"), Value::Int(1)])),
            49
        );
        // 16 + (16 + len("ab") + 16)
        assert_eq!(value_size(&Value::map([("ab", Value::Bool(true))])), 50);
        // 16 + (16 + 16)
        assert_eq!(value_size(&Value::some(Value::some(Value::Int(1)))), 48);
        // 16 + 16 + (16 + 2)
        assert_eq!(
            value_size(&Value::record(
                "P",
                vec![("x", Value::Int(1)), ("y", Value::str("hi"))]
            )),
            50
        );
        assert_eq!(entry_size("key", &Value::Int(1)), 19);
    }

    #[test]
    fn shared_and_cyclic_containers_are_counted_once() {
        let inner = Value::array(vec![Value::str("0123456789")]);
        // 16 + inner(16 + 26) + 16 for the second reference
        assert_eq!(value_size(&Value::array(vec![inner.clone(), inner])), 74);

        let arr = Array::new(vec![Value::Int(1)]);
        arr.0.lock().push(Value::Array(arr.clone()));
        // 16 + 16 (the int) + 16 (the slot of the self-reference)
        assert_eq!(value_size(&Value::Array(arr.clone())), 48);
        arr.0.lock().clear();
    }

    #[test]
    fn exponential_sharing_is_measured_in_linear_time() {
        let mut v = Value::Int(0);
        for _ in 0..200 {
            v = Value::array(vec![v.clone(), v]);
        }
        // Each level: its slot + the first reference's contents + 16 for the second.
        assert_eq!(value_size(&v), 16 + 200 * 32);
    }

    #[test]
    fn very_deep_values_do_not_overflow_the_stack() {
        let handle = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(|| {
                let mut v = Value::Nil;
                for _ in 0..100_000 {
                    v = Value::some(v);
                }
                let size = value_size(&v);
                drop(v);
                size
            })
            .unwrap();
        assert_eq!(handle.join().unwrap(), 16 * 100_001);
    }
}
