//! Operator semantics off the fast path: mixed-type arithmetic, string concatenation,
//! comparison, field and index access.

use std::cmp::Ordering;
use std::sync::Arc;

use concerto_ir::BinOp;

use crate::error::VmError;
use crate::value::{Str, Value};

#[cold]
fn arith_error(op: &str, a: &Value, b: &Value) -> VmError {
    VmError::type_error(format!(
        "cannot {op} {} and {}",
        a.type_name(),
        b.type_name()
    ))
}

/// `ADD`: numbers add (Int wraps, Int+Float is Float); a String on either side concatenates
/// with the other operand's display form.
pub(crate) fn add(a: Value, b: Value) -> Result<Value, VmError> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Ok(Value::Int(x.wrapping_add(y))),
        (Value::Float(x), Value::Float(y)) => Ok(Value::Float(x + y)),
        (Value::Int(x), Value::Float(y)) => Ok(Value::Float(x as f64 + y)),
        (Value::Float(x), Value::Int(y)) => Ok(Value::Float(x + y as f64)),
        (Value::Str(mut s), b) => {
            match &b {
                Value::Str(t) => s.push_str(t),
                Value::Int(i) => s.push_str(itoa::Buffer::new().format(*i)),
                other => s.push_str(&other.to_display()),
            }
            Ok(Value::Str(s))
        }
        (a, Value::Str(t)) => {
            let mut out = a.to_display();
            out.push_str(&t);
            Ok(Value::Str(Str::from(out)))
        }
        (a, b) => Err(arith_error("add", &a, &b)),
    }
}

/// `SUB`
pub(crate) fn sub(a: Value, b: Value) -> Result<Value, VmError> {
    match (&a, &b) {
        (Value::Int(x), Value::Int(y)) => Ok(Value::Int(x.wrapping_sub(*y))),
        (Value::Float(x), Value::Float(y)) => Ok(Value::Float(x - y)),
        (Value::Int(x), Value::Float(y)) => Ok(Value::Float(*x as f64 - y)),
        (Value::Float(x), Value::Int(y)) => Ok(Value::Float(x - *y as f64)),
        _ => Err(arith_error("subtract", &a, &b)),
    }
}

/// `MUL`
pub(crate) fn mul(a: Value, b: Value) -> Result<Value, VmError> {
    match (&a, &b) {
        (Value::Int(x), Value::Int(y)) => Ok(Value::Int(x.wrapping_mul(*y))),
        (Value::Float(x), Value::Float(y)) => Ok(Value::Float(x * y)),
        (Value::Int(x), Value::Float(y)) => Ok(Value::Float(*x as f64 * y)),
        (Value::Float(x), Value::Int(y)) => Ok(Value::Float(x * *y as f64)),
        _ => Err(arith_error("multiply", &a, &b)),
    }
}

/// `DIV`: Int division truncates towards zero and raises on a zero divisor; float division
/// follows IEEE.
pub(crate) fn div(a: Value, b: Value) -> Result<Value, VmError> {
    match (&a, &b) {
        (Value::Int(_), Value::Int(0)) => Err(VmError::division_by_zero()),
        (Value::Int(x), Value::Int(y)) => Ok(Value::Int(x.wrapping_div(*y))),
        (Value::Float(x), Value::Float(y)) => Ok(Value::Float(x / y)),
        (Value::Int(x), Value::Float(y)) => Ok(Value::Float(*x as f64 / y)),
        (Value::Float(x), Value::Int(y)) => Ok(Value::Float(x / *y as f64)),
        _ => Err(arith_error("divide", &a, &b)),
    }
}

/// `MOD`: the sign follows the dividend; Int by zero raises.
pub(crate) fn rem(a: Value, b: Value) -> Result<Value, VmError> {
    match (&a, &b) {
        (Value::Int(_), Value::Int(0)) => Err(VmError::division_by_zero()),
        (Value::Int(x), Value::Int(y)) => Ok(Value::Int(x.wrapping_rem(*y))),
        (Value::Float(x), Value::Float(y)) => Ok(Value::Float(x % y)),
        (Value::Int(x), Value::Float(y)) => Ok(Value::Float(*x as f64 % y)),
        (Value::Float(x), Value::Int(y)) => Ok(Value::Float(x % *y as f64)),
        _ => Err(arith_error("take the remainder of", &a, &b)),
    }
}

fn op_symbol(op: BinOp) -> &'static str {
    match op {
        BinOp::Lt => "<",
        BinOp::Gt => ">",
        BinOp::Lte => "<=",
        _ => ">=",
    }
}

/// Ordering for `LT GT LTE GTE`: numbers in any mix, strings by bytes. `None` when a NaN
/// is involved (every comparison is then false).
pub(crate) fn compare(a: &Value, b: &Value, op: BinOp) -> Result<Option<Ordering>, VmError> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Ok(Some(x.cmp(y))),
        (Value::Float(x), Value::Float(y)) => Ok(x.partial_cmp(y)),
        (Value::Int(x), Value::Float(y)) => Ok((*x as f64).partial_cmp(y)),
        (Value::Float(x), Value::Int(y)) => Ok(x.partial_cmp(&(*y as f64))),
        (Value::Str(x), Value::Str(y)) => Ok(Some(x.as_str().cmp(y.as_str()))),
        _ => Err(VmError::type_error(format!(
            "cannot compare {} {} {}",
            a.type_name(),
            op_symbol(op),
            b.type_name()
        ))),
    }
}

/// `FIELD_GET`
pub(crate) fn field_get(obj: &Value, name: &Arc<str>) -> Result<Value, VmError> {
    match obj {
        Value::Struct(s) => match s.ty.field_index(name) {
            Some(idx) => Ok(s.fields.lock()[idx].clone()),
            None => Err(VmError::no_field(name, &s.ty.name)),
        },
        Value::Map(m) => Ok(m.0.lock().get(&**name).cloned().unwrap_or(Value::Nil)),
        Value::Enum(e) => match &e.field_names {
            Some(names) => match names.iter().position(|n| n == name) {
                Some(idx) => Ok(e.payload[idx].clone()),
                None => Err(VmError::no_field(name, &e.type_name)),
            },
            None => Err(VmError::no_field(name, &e.type_name)),
        },
        other => Err(VmError::type_error(format!(
            "cannot access field '{name}' on {}",
            other.type_name()
        ))),
    }
}

/// `FIELD_SET`: mutates the shared object in place.
pub(crate) fn field_set(obj: &Value, name: &Arc<str>, value: Value) -> Result<(), VmError> {
    match obj {
        Value::Struct(s) => match s.ty.field_index(name) {
            Some(idx) => {
                s.fields.lock()[idx] = value;
                Ok(())
            }
            None => Err(VmError::no_field(name, &s.ty.name)),
        },
        Value::Map(m) => {
            m.0.lock().insert(Str::from(&**name), value);
            Ok(())
        }
        other => Err(VmError::type_error(format!(
            "cannot assign field '{name}' on {}",
            other.type_name()
        ))),
    }
}

fn key_of(idx: &Value) -> Str {
    match idx {
        Value::Str(s) => s.clone(),
        other => Str::from(other.to_display()),
    }
}

/// `INDEX_GET` off the array fast path.
pub(crate) fn index_get(coll: &Value, idx: &Value) -> Result<Value, VmError> {
    match (coll, idx) {
        (Value::Array(arr), Value::Int(i)) => {
            let items = arr.0.lock();
            match usize::try_from(*i).ok().and_then(|i| items.get(i)) {
                Some(v) => Ok(v.clone()),
                None => Err(VmError::index_out_of_bounds(*i, items.len())),
            }
        }
        (Value::Map(m), key) => {
            let key = key_of(key);
            Ok(m.0.lock().get(key.as_str()).cloned().unwrap_or(Value::Nil))
        }
        (Value::Struct(s), Value::Str(name)) => match s.ty.field_index_str(name) {
            Some(i) => Ok(s.fields.lock()[i].clone()),
            None => Err(VmError::no_field(name, &s.ty.name)),
        },
        (Value::Ok(v) | Value::Err(v) | Value::Some(v), _) => Ok((**v).clone()),
        (Value::None, _) => Ok(Value::Nil),
        (Value::Enum(e), Value::Int(i)) => Ok(usize::try_from(*i)
            .ok()
            .and_then(|i| e.payload.get(i))
            .cloned()
            .unwrap_or(Value::Nil)),
        (Value::Enum(e), Value::Str(name)) => match &e.field_names {
            Some(names) => match names.iter().position(|n| **n == **name) {
                Some(i) => Ok(e.payload[i].clone()),
                None => Err(VmError::no_field(name, &e.type_name)),
            },
            None => Err(VmError::no_field(name, &e.type_name)),
        },
        (Value::Range(r), Value::Int(i)) => match r.get(*i) {
            Some(v) => Ok(Value::Int(v)),
            None => Err(VmError::index_out_of_bounds(
                *i,
                r.len().map_or(usize::MAX, |n| n as usize),
            )),
        },
        (Value::Array(arr), Value::Range(r)) => {
            let items = arr.0.lock();
            let (from, to) = r.clamp(items.len());
            Ok(Value::array(items[from..to].to_vec()))
        }
        (Value::Str(s), Value::Int(i)) => {
            let found = usize::try_from(*i).ok().and_then(|i| {
                if s.is_ascii() {
                    s.as_str().get(i..i + 1).map(str::to_string)
                } else {
                    s.chars().nth(i).map(String::from)
                }
            });
            match found {
                Some(c) => Ok(Value::str(c)),
                None => Err(VmError::index_out_of_bounds(*i, s.chars().count())),
            }
        }
        (Value::Str(s), Value::Range(r)) => {
            let chars: Vec<char> = s.chars().collect();
            let (from, to) = r.clamp(chars.len());
            Ok(Value::str(chars[from..to].iter().collect::<String>()))
        }
        (Value::Array(_), other) => Err(VmError::type_error(format!(
            "array index must be Int, got {}",
            other.type_name()
        ))),
        (other, idx) => Err(VmError::type_error(format!(
            "cannot index {} with {}",
            other.type_name(),
            idx.type_name()
        ))),
    }
}

/// `INDEX_SET`: mutates the shared collection in place.
pub(crate) fn index_set(coll: &Value, idx: Value, value: Value) -> Result<(), VmError> {
    match (coll, &idx) {
        (Value::Array(arr), Value::Int(i)) => {
            let mut items = arr.0.lock();
            let len = items.len();
            match usize::try_from(*i).ok().and_then(|i| items.get_mut(i)) {
                Some(slot) => {
                    *slot = value;
                    Ok(())
                }
                None => Err(VmError::index_out_of_bounds(*i, len)),
            }
        }
        (Value::Map(m), key) => {
            // The key first: it may be the map itself, whose display takes the same lock.
            let key = key_of(key);
            m.0.lock().insert(key, value);
            Ok(())
        }
        (Value::Struct(s), Value::Str(name)) => match s.ty.field_index_str(name) {
            Some(i) => {
                s.fields.lock()[i] = value;
                Ok(())
            }
            None => Err(VmError::no_field(name, &s.ty.name)),
        },
        (Value::Array(_), other) => Err(VmError::type_error(format!(
            "array index must be Int, got {}",
            other.type_name()
        ))),
        (other, idx) => Err(VmError::type_error(format!(
            "cannot assign index {} of {}",
            idx.type_name(),
            other.type_name()
        ))),
    }
}

/// `CHECK_TYPE`: the runtime type name, or a variant path (`Result::Ok`, `Option::None`,
/// `Shape::Circle`, or just `Ok`, `Circle`).
pub(crate) fn check_type(value: &Value, name: &str) -> bool {
    if value.type_name() == name {
        return true;
    }
    let variant = match value {
        Value::Ok(_) => "Ok",
        Value::Err(_) => "Err",
        Value::Some(_) => "Some",
        Value::None => "None",
        Value::Enum(e) => &e.variant,
        _ => return matches!((value, name), (_, "any" | "Any")),
    };
    match name.rsplit_once("::") {
        Some((owner, v)) => v == variant && owner == value.type_name(),
        None => name == variant,
    }
}

/// Integer arithmetic of a fused op: `None` for comparisons and zero divisors.
#[inline(always)]
pub(crate) fn int_arith(op: BinOp, x: i64, y: i64) -> Option<i64> {
    match op {
        BinOp::Add => Some(x.wrapping_add(y)),
        BinOp::Sub => Some(x.wrapping_sub(y)),
        BinOp::Mul => Some(x.wrapping_mul(y)),
        BinOp::Div if y != 0 => Some(x.wrapping_div(y)),
        BinOp::Mod if y != 0 => Some(x.wrapping_rem(y)),
        _ => None,
    }
}

/// Integer comparison of a fused branch, without a branch on the operator: each comparison
/// is the set of orderings (less, equal, greater) it accepts.
#[inline(always)]
pub(crate) fn int_cmp(op: BinOp, x: i64, y: i64) -> bool {
    const fn accepts(op: BinOp) -> u8 {
        match op {
            BinOp::Eq => 0b010,
            BinOp::Neq => 0b101,
            BinOp::Lt => 0b001,
            BinOp::Gt => 0b100,
            BinOp::Lte => 0b011,
            BinOp::Gte => 0b110,
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod => 0,
        }
    }
    const TABLE: [u8; 11] = {
        let ops = [
            BinOp::Add,
            BinOp::Sub,
            BinOp::Mul,
            BinOp::Div,
            BinOp::Mod,
            BinOp::Eq,
            BinOp::Neq,
            BinOp::Lt,
            BinOp::Gt,
            BinOp::Lte,
            BinOp::Gte,
        ];
        let mut table = [0u8; 11];
        let mut i = 0;
        while i < ops.len() {
            table[ops[i] as usize] = accepts(ops[i]);
            i += 1;
        }
        table
    };
    let ordering = (x > y) as u32 + (x >= y) as u32; // 0 less, 1 equal, 2 greater
    TABLE[op as usize] >> ordering & 1 != 0
}

/// A fused operation on any values.
#[cold]
pub(crate) fn binary(op: BinOp, a: &Value, b: &Value) -> Result<Value, VmError> {
    match op {
        BinOp::Add => add(a.clone(), b.clone()),
        BinOp::Sub => sub(a.clone(), b.clone()),
        BinOp::Mul => mul(a.clone(), b.clone()),
        BinOp::Div => div(a.clone(), b.clone()),
        BinOp::Mod => rem(a.clone(), b.clone()),
        _ => truth(op, a, b).map(Value::Bool),
    }
}

/// A fused comparison on any values.
pub(crate) fn truth(op: BinOp, a: &Value, b: &Value) -> Result<bool, VmError> {
    if let (Value::Int(x), Value::Int(y)) = (a, b) {
        return Ok(int_cmp(op, *x, *y));
    }
    Ok(match op {
        BinOp::Eq => a.equals(b),
        BinOp::Neq => !a.equals(b),
        BinOp::Lt | BinOp::Gt | BinOp::Lte | BinOp::Gte => match compare(a, b, op)? {
            None => false,
            Some(o) => match op {
                BinOp::Lt => o.is_lt(),
                BinOp::Gt => o.is_gt(),
                BinOp::Lte => o.is_le(),
                _ => o.is_ge(),
            },
        },
        // Arithmetic results are not comparisons; use their truthiness.
        _ => binary(op, a, b)?.is_truthy(),
    })
}

/// `BUILD_RANGE`: `start` (nil: 0) and `end` (nil: open) must be integers.
pub(crate) fn build_range(
    start: &Value,
    end: &Value,
    inclusive: &Value,
) -> Result<crate::value::Range, VmError> {
    let start = match start {
        Value::Int(i) => *i,
        Value::Nil => 0,
        other => {
            return Err(VmError::type_error(format!(
                "a range's start must be Int, got {}",
                other.type_name()
            )));
        }
    };
    let end = match end {
        Value::Int(i) => Some(*i),
        Value::Nil => None,
        other => {
            return Err(VmError::type_error(format!(
                "a range's end must be Int, got {}",
                other.type_name()
            )));
        }
    };
    Ok(crate::value::Range {
        start,
        end,
        inclusive: inclusive.is_truthy(),
    })
}

/// The number of integers in a range; an open range (`a..`) has none to count, and one with
/// more than `i64::MAX` integers is an error too.
pub(crate) fn range_len(r: &crate::value::Range) -> Result<i64, VmError> {
    match (r.end, r.len()) {
        (None, _) => Err(VmError::type_error(format!(
            "the open range {r} has no length (give it an end: {r}N)"
        ))),
        (Some(_), Some(n)) => Ok(n),
        (Some(_), None) => Err(VmError::type_error(format!(
            "the range {r} holds more integers than an Int can count"
        ))),
    }
}

/// The length of a string in characters (Unicode scalar values), the unit string indexing,
/// slicing, `for` over a string and `std::string` use.
pub(crate) fn char_len(s: &str) -> i64 {
    let n = if s.is_ascii() {
        s.len()
    } else {
        s.chars().count()
    };
    i64::try_from(n).unwrap_or(i64::MAX)
}
