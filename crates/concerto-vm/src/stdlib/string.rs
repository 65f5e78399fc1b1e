//! `std::string` (also the String methods, with the receiver as first argument).
//!
//! Lengths and indices here count characters (Unicode scalar values); the global `len` and
//! the `.len()` method count bytes, as in the reference runtime.

use crate::builtins::{int_arg, ret, str_arg};
use crate::error::VmError;
use crate::exec::{Ctx, Flow};
use crate::value::Value;

const M: &str = "std::string::";

fn name(f: &str) -> String {
    format!("{M}{f}")
}

/// `split(s, delim)`: every occurrence, empty fields kept.
pub(crate) fn split(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let n = name("split");
    let s = str_arg(&n, args, 0)?;
    let d = str_arg(&n, args, 1)?;
    ret(Value::array(s.split(d).map(Value::from).collect()))
}

/// `join(array, sep)`: elements in display form.
pub(crate) fn join(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let Some(Value::Array(items)) = args.first() else {
        return Err(VmError::type_error(
            "std::string::join expected Array as first argument",
        ));
    };
    let sep = str_arg(&name("join"), args, 1)?;
    let parts: Vec<String> = items.to_vec().iter().map(Value::to_display).collect();
    ret(Value::str(parts.join(sep)))
}

/// `trim(s)`
pub(crate) fn trim(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    ret(Value::from(str_arg(&name("trim"), args, 0)?.trim()))
}

/// `trim_start(s)`
pub(crate) fn trim_start(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    ret(Value::from(
        str_arg(&name("trim_start"), args, 0)?.trim_start(),
    ))
}

/// `trim_end(s)`
pub(crate) fn trim_end(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    ret(Value::from(str_arg(&name("trim_end"), args, 0)?.trim_end()))
}

/// `replace(s, from, to)`: every non-overlapping match.
pub(crate) fn replace(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let n = name("replace");
    let (s, from, to) = (
        str_arg(&n, args, 0)?,
        str_arg(&n, args, 1)?,
        str_arg(&n, args, 2)?,
    );
    ret(Value::str(s.replace(from, to)))
}

/// `to_upper(s)`
pub(crate) fn to_upper(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    ret(Value::str(
        str_arg(&name("to_upper"), args, 0)?.to_uppercase(),
    ))
}

/// `to_lower(s)`
pub(crate) fn to_lower(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    ret(Value::str(
        str_arg(&name("to_lower"), args, 0)?.to_lowercase(),
    ))
}

/// `contains(s, sub)`
pub(crate) fn contains(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let n = name("contains");
    ret(Value::Bool(
        str_arg(&n, args, 0)?.contains(str_arg(&n, args, 1)?),
    ))
}

/// `starts_with(s, prefix)`
pub(crate) fn starts_with(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let n = name("starts_with");
    ret(Value::Bool(
        str_arg(&n, args, 0)?.starts_with(str_arg(&n, args, 1)?),
    ))
}

/// `ends_with(s, suffix)`
pub(crate) fn ends_with(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let n = name("ends_with");
    ret(Value::Bool(
        str_arg(&n, args, 0)?.ends_with(str_arg(&n, args, 1)?),
    ))
}

/// `substring(s, start, end)`: character indices, clamped; a negative start gives `""`,
/// a negative end means "to the end".
pub(crate) fn substring(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let n = name("substring");
    let s = str_arg(&n, args, 0)?;
    let start = int_arg(&n, args, 1)?;
    let end = int_arg(&n, args, 2)?;
    if start < 0 {
        return ret(Value::str(""));
    }
    let start = start as usize;
    let end = if end < 0 { usize::MAX } else { end as usize };
    if end <= start {
        return ret(Value::str(""));
    }
    ret(Value::str(
        s.chars().skip(start).take(end - start).collect::<String>(),
    ))
}

/// `len(s)`: character count.
pub(crate) fn len(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    ret(Value::Int(
        str_arg(&name("len"), args, 0)?.chars().count() as i64
    ))
}

/// `repeat(s, n)`: `""` for `n <= 0`.
pub(crate) fn repeat(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let n = name("repeat");
    let s = str_arg(&n, args, 0)?;
    let times = int_arg(&n, args, 1)?.max(0) as usize;
    let total = s.len().saturating_mul(times);
    if total > ctx.config.max_collection_len {
        return Err(crate::builtins::limit_error(format!(
            "std::string::repeat would build a string of {total} bytes"
        )));
    }
    ret(Value::str(s.repeat(times)))
}

/// `reverse(s)`: by character.
pub(crate) fn reverse(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    ret(Value::str(
        str_arg(&name("reverse"), args, 0)?
            .chars()
            .rev()
            .collect::<String>(),
    ))
}

/// `parse_int(s)`: `Result<Int, String>` of the trimmed text.
pub(crate) fn parse_int(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let s = str_arg(&name("parse_int"), args, 0)?;
    ret(match s.trim().parse::<i64>() {
        Ok(i) => Value::ok(Value::Int(i)),
        Err(e) => Value::err(Value::str(e.to_string())),
    })
}

/// `parse_float(s)`: `Result<Float, String>` of the trimmed text.
pub(crate) fn parse_float(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let s = str_arg(&name("parse_float"), args, 0)?;
    ret(match s.trim().parse::<f64>() {
        Ok(f) => Value::ok(Value::Float(f)),
        Err(e) => Value::err(Value::str(e.to_string())),
    })
}

/// `chars(s)`: one-character strings.
pub(crate) fn chars(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let s = str_arg(&name("chars"), args, 0)?;
    ret(Value::array(
        s.chars().map(|c| Value::str(c.to_string())).collect(),
    ))
}

/// `lines(s)`
pub(crate) fn lines(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let s = str_arg(&name("lines"), args, 0)?;
    ret(Value::array(s.lines().map(Value::from).collect()))
}

/// `is_empty(s)`
pub(crate) fn is_empty(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    ret(Value::Bool(str_arg(&name("is_empty"), args, 0)?.is_empty()))
}
