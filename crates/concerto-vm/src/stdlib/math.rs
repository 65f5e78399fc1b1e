//! `std::math`

use crate::builtins::{num_arg, ret};
use crate::error::VmError;
use crate::exec::{Ctx, Flow};
use crate::value::Value;

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// `abs(x)`: Int stays Int (wrapping at `i64::MIN`).
pub(crate) fn abs(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    ret(match num_arg("std::math::abs", args, 0)? {
        Value::Int(i) => Value::Int(i.wrapping_abs()),
        v => Value::Float(f(v).abs()),
    })
}

fn min_max(name: &str, args: &[Value], want_min: bool) -> Result<Flow, VmError> {
    let a = num_arg(name, args, 0)?;
    let b = num_arg(name, args, 1)?;
    ret(match (a, b) {
        (Value::Int(x), Value::Int(y)) => Value::Int(if want_min { *x.min(y) } else { *x.max(y) }),
        _ => Value::Float(if want_min {
            f(a).min(f(b))
        } else {
            f(a).max(f(b))
        }),
    })
}

/// `min(a, b)`: Int when both are Int, else Float.
pub(crate) fn min(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    min_max("std::math::min", args, true)
}

/// `max(a, b)`
pub(crate) fn max(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    min_max("std::math::max", args, false)
}

/// `clamp(x, lo, hi)` = `min(max(x, lo), hi)`.
pub(crate) fn clamp(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let name = "std::math::clamp";
    let (x, lo, hi) = (
        num_arg(name, args, 0)?,
        num_arg(name, args, 1)?,
        num_arg(name, args, 2)?,
    );
    ret(match (x, lo, hi) {
        (Value::Int(x), Value::Int(lo), Value::Int(hi)) => Value::Int((*x).max(*lo).min(*hi)),
        _ => Value::Float(f(x).max(f(lo)).min(f(hi))),
    })
}

fn to_int(v: f64) -> i64 {
    // `as` saturates and maps NaN to 0.
    v as i64
}

/// `round(x)`: half away from zero, as Int.
pub(crate) fn round(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    ret(match num_arg("std::math::round", args, 0)? {
        Value::Int(i) => Value::Int(*i),
        v => Value::Int(to_int(f(v).round())),
    })
}

/// `floor(x)` as Int.
pub(crate) fn floor(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    ret(match num_arg("std::math::floor", args, 0)? {
        Value::Int(i) => Value::Int(*i),
        v => Value::Int(to_int(f(v).floor())),
    })
}

/// `ceil(x)` as Int.
pub(crate) fn ceil(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    ret(match num_arg("std::math::ceil", args, 0)? {
        Value::Int(i) => Value::Int(*i),
        v => Value::Int(to_int(f(v).ceil())),
    })
}

/// `pow(b, e)`: Int for a non-negative Int exponent (wrapping), else Float.
pub(crate) fn pow(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let b = num_arg("std::math::pow", args, 0)?;
    let e = num_arg("std::math::pow", args, 1)?;
    ret(match (b, e) {
        (Value::Int(b), Value::Int(e)) if *e >= 0 => {
            Value::Int(b.wrapping_pow(u32::try_from(*e).unwrap_or(u32::MAX)))
        }
        (Value::Int(b), Value::Int(e)) => {
            Value::Float((*b as f64).powi((*e).max(i32::MIN as i64) as i32))
        }
        _ => Value::Float(f(b).powf(f(e))),
    })
}

/// `sqrt(x)` as Float.
pub(crate) fn sqrt(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    ret(Value::Float(f(num_arg("std::math::sqrt", args, 0)?).sqrt()))
}

/// `random()`: Float in `[0, 1)`.
pub(crate) fn random(ctx: &mut Ctx, _: &[Value]) -> Result<Flow, VmError> {
    let bits = ctx.next_random() >> 11;
    ret(Value::Float(bits as f64 / (1u64 << 53) as f64))
}

/// `random_int(lo, hi)`: Int in `[lo, hi)`.
pub(crate) fn random_int(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let name = "std::math::random_int";
    let lo = to_int(f(num_arg(name, args, 0)?).trunc());
    let hi = to_int(f(num_arg(name, args, 1)?).trunc());
    let (lo, hi) = match (&args[0], &args[1]) {
        (Value::Int(a), Value::Int(b)) => (*a, *b),
        _ => (lo, hi),
    };
    if lo >= hi {
        return Err(VmError::call_error(
            "std::math::random_int: min must be less than max",
        ));
    }
    let span = (hi as i128 - lo as i128) as u128;
    let r = (ctx.next_random() as u128 % span) as i128;
    ret(Value::Int((lo as i128 + r) as i64))
}
