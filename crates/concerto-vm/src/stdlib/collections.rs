//! `std::collections`: `Set`, `Queue` and `Stack`.
//!
//! Each is a struct of its type name with one field, `elements` (an array in insertion
//! order), so it displays as `Set {elements: [..]}` and serialises as `{"elements": [..]}`.
//! The methods have value semantics, as in the reference runtime: `insert`, `remove`,
//! `enqueue`, `push` and `rest` return a new collection and leave the receiver unchanged;
//! `dequeue` and `pop` only look at the front or top.

use std::sync::Arc;

use crate::builtins::{arg, ret};
use crate::error::VmError;
use crate::exec::{Ctx, Flow};
use crate::methods::Method;
use crate::value::{StructObj, StructType, Value};

fn make(kind: &str, elements: Vec<Value>) -> Value {
    Value::Struct(StructObj::new(
        StructType::new(kind, vec![Arc::from("elements")]),
        vec![Value::array(elements)],
    ))
}

/// Element equality: like `==` but an Int never equals a Float.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Int(_), Value::Float(_)) | (Value::Float(_), Value::Int(_)) => false,
        _ => a.equals(b),
    }
}

fn dedup(items: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::with_capacity(items.len());
    for item in items {
        if !out.iter().any(|x| same(x, &item)) {
            out.push(item);
        }
    }
    out
}

/// `Set::new()`
pub(crate) fn set_new(_: &mut Ctx, _: &[Value]) -> Result<Flow, VmError> {
    ret(make("Set", Vec::new()))
}

/// `Set::from(array)`: duplicates dropped, first occurrences kept in order.
pub(crate) fn set_from(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    match arg(args, 0) {
        Value::Array(a) => ret(make("Set", dedup(a.to_vec()))),
        other => Err(VmError::type_error(format!(
            "std::collections::Set::from expected Array, got {}",
            other.type_name()
        ))),
    }
}

/// `Queue::new()`
pub(crate) fn queue_new(_: &mut Ctx, _: &[Value]) -> Result<Flow, VmError> {
    ret(make("Queue", Vec::new()))
}

/// `Stack::new()`
pub(crate) fn stack_new(_: &mut Ctx, _: &[Value]) -> Result<Flow, VmError> {
    ret(make("Stack", Vec::new()))
}

fn elements(obj: &StructObj) -> Vec<Value> {
    match obj.fields.lock().first() {
        Some(Value::Array(a)) => a.to_vec(),
        _ => Vec::new(),
    }
}

fn needed<'a>(kind: &str, method: &str, args: &'a [Value]) -> Result<&'a Value, VmError> {
    args.first()
        .ok_or_else(|| VmError::type_error(format!("{kind}::{method} missing argument")))
}

fn other_set(args: &[Value]) -> Result<Vec<Value>, VmError> {
    match args.first() {
        Some(Value::Struct(s)) if &*s.ty.name == "Set" => Ok(elements(s)),
        _ => Err(VmError::type_error("expected Set argument")),
    }
}

/// A method on a collection struct.
pub(crate) fn method(
    method: Method,
    name: &str,
    obj: &Arc<StructObj>,
    args: &[Value],
) -> Result<Flow, VmError> {
    let kind = &*obj.ty.name;
    let items = elements(obj);
    let some_or_none = |v: Option<&Value>| Value::option(v.cloned());
    match (kind, method) {
        (_, Method::Len) => ret(Value::Int(items.len() as i64)),
        (_, Method::IsEmpty) => ret(Value::Bool(items.is_empty())),
        ("Set", Method::Insert) => {
            let v = needed(kind, name, args)?;
            let mut items = items;
            if !items.iter().any(|x| same(x, v)) {
                items.push(v.clone());
            }
            ret(make(kind, items))
        }
        ("Set", Method::Remove) => {
            let v = needed(kind, name, args)?;
            ret(make(
                kind,
                items.into_iter().filter(|x| !same(x, v)).collect(),
            ))
        }
        ("Set", Method::Contains) => {
            let v = needed(kind, name, args)?;
            ret(Value::Bool(items.iter().any(|x| same(x, v))))
        }
        ("Set", Method::Union) => {
            let mut items = items;
            items.extend(other_set(args)?);
            ret(make(kind, dedup(items)))
        }
        ("Set", Method::Intersection) => {
            let other = other_set(args)?;
            ret(make(
                kind,
                items
                    .into_iter()
                    .filter(|x| other.iter().any(|y| same(x, y)))
                    .collect(),
            ))
        }
        ("Set", Method::Difference) => {
            let other = other_set(args)?;
            ret(make(
                kind,
                items
                    .into_iter()
                    .filter(|x| !other.iter().any(|y| same(x, y)))
                    .collect(),
            ))
        }
        ("Queue", Method::Enqueue) | ("Stack", Method::Push) => {
            let v = needed(kind, name, args)?;
            let mut items = items;
            items.push(v.clone());
            ret(make(kind, items))
        }
        ("Queue", Method::Dequeue | Method::Peek) => ret(some_or_none(items.first())),
        ("Stack", Method::Pop | Method::Peek) => ret(some_or_none(items.last())),
        ("Queue", Method::Rest) => ret(make(kind, items.into_iter().skip(1).collect())),
        ("Stack", Method::Rest) => {
            let mut items = items;
            items.pop();
            ret(make(kind, items))
        }
        _ => Err(VmError::type_error(format!("no method '{name}' on {kind}"))),
    }
}
