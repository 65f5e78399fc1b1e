//! Global built-in functions.

use crate::builtins::{arg, ret};
use crate::error::{ErrorKind, VmError};
use crate::exec::{Ctx, Flow};
use crate::value::Value;

fn joined(args: &[Value]) -> String {
    let mut out = String::new();
    for (idx, a) in args.iter().enumerate() {
        if idx > 0 {
            out.push(' ');
        }
        a.write_display(&mut out, 0);
    }
    out
}

/// `print(a, …)`: display strings separated by spaces, no newline.
pub(crate) fn print(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    ctx.host.system.print(&joined(args));
    ret(Value::Nil)
}

/// `println(a, …)`
pub(crate) fn println(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let mut text = joined(args);
    text.push('\n');
    ctx.host.system.print(&text);
    ret(Value::Nil)
}

/// `Ok(v)`
pub(crate) fn ok(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    ret(Value::ok(arg(args, 0).clone()))
}

/// `Err(e)`
pub(crate) fn err(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    ret(Value::err(arg(args, 0).clone()))
}

/// `Some(v)`
pub(crate) fn some(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    ret(Value::some(arg(args, 0).clone()))
}

/// `env(name)`: the variable's value, or `nil` when unset.
pub(crate) fn env(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    match arg(args, 0) {
        Value::Str(name) => ret(ctx.host.system.env_var(name).map_or(Value::Nil, Value::str)),
        _ => Err(VmError::type_error("env() requires a string argument")),
    }
}

/// `len(x)`: characters of a string, elements of an array or map, integers of a range.
pub(crate) fn len(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    match arg(args, 0) {
        Value::Str(s) => ret(Value::Int(crate::ops::char_len(s))),
        Value::Array(a) => ret(Value::Int(a.len() as i64)),
        Value::Map(m) => ret(Value::Int(m.len() as i64)),
        Value::Range(r) => ret(Value::Int(crate::ops::range_len(r)?)),
        other => Err(VmError::type_error(format!(
            "len() not supported on {}",
            other.type_name()
        ))),
    }
}

/// `typeof(x)`
pub(crate) fn type_of(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    ret(Value::str(arg(args, 0).type_name()))
}

/// `panic(msg)`: ends the execution; never caught.
pub(crate) fn panic(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let msg = match args.first() {
        Some(v) => v.to_display(),
        None => "panic!".to_string(),
    };
    Err(VmError::new(ErrorKind::Panic, format!("panic: {msg}")))
}

/// `ToolError::new(msg)`: `ToolError { message }`.
pub(crate) fn tool_error_new(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let message = match args.first() {
        Some(v) => v.to_display(),
        None => String::new(),
    };
    ret(Value::record(
        "ToolError",
        vec![("message", Value::str(message))],
    ))
}

/// A failed assertion: a catchable error of kind [`ErrorKind::Assertion`].
fn assertion_failed(detail: String) -> VmError {
    VmError::new(ErrorKind::Assertion, format!("assertion failed: {detail}"))
}

/// How an assertion shows a value: strings quoted, everything else in its display form.
fn shown(v: &Value) -> String {
    match v {
        Value::Str(s) => format!("{:?}", s.as_str()),
        other => other.to_display(),
    }
}

/// `assert(condition)` / `assert(condition, message)`.
pub(crate) fn assert(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    if args.is_empty() || args.len() > 2 {
        return Err(VmError::new(
            ErrorKind::Arity,
            format!("assert expects 1 or 2 arguments, got {}", args.len()),
        ));
    }
    let condition = arg(args, 0);
    if condition.is_truthy() {
        return ret(Value::Nil);
    }
    Err(assertion_failed(match args.get(1) {
        Some(message) => message.to_display(),
        None => format!("expected truthy value, got {}", shown(condition)),
    }))
}

/// `assert_eq` (`equal`) or `assert_ne`: `(left, right)` or `(left, right, message)`.
fn assert_compare(name: &str, args: &[Value], equal: bool) -> Result<Flow, VmError> {
    if !(2..=3).contains(&args.len()) {
        return Err(VmError::new(
            ErrorKind::Arity,
            format!("{name} expects 2 or 3 arguments, got {}", args.len()),
        ));
    }
    let (left, right) = (arg(args, 0), arg(args, 1));
    if left.equals(right) == equal {
        return ret(Value::Nil);
    }
    let detail = if equal {
        format!("{} != {}", shown(left), shown(right))
    } else {
        format!("{} == {} (expected not equal)", shown(left), shown(right))
    };
    Err(assertion_failed(match args.get(2) {
        Some(message) => format!("{}: {detail}", message.to_display()),
        None => detail,
    }))
}

/// `assert_eq(left, right)` / `assert_eq(left, right, message)`: structural equality.
pub(crate) fn assert_eq(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    assert_compare("assert_eq", args, true)
}

/// `assert_ne(left, right)` / `assert_ne(left, right, message)`.
pub(crate) fn assert_ne(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    assert_compare("assert_ne", args, false)
}

/// `test_emits()`: the emits of the running test so far, in order, each an
/// `Emit { channel, payload }`. Only a test run (`concerto test`) captures emits.
pub(crate) fn test_emits(ctx: &mut Ctx, _: &[Value]) -> Result<Flow, VmError> {
    let Some(captured) = &ctx.captured else {
        return Err(VmError::new(
            ErrorKind::Call,
            "test_emits() is only available while a test runs (`concerto test`)",
        ));
    };
    let items = captured
        .lock()
        .iter()
        .map(|(channel, payload)| {
            Value::record(
                "Emit",
                vec![
                    ("channel", Value::Str(channel.clone())),
                    ("payload", payload.clone()),
                ],
            )
        })
        .collect();
    ret(Value::array(items))
}
