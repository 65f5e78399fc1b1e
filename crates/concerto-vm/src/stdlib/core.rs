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

/// `len(x)`: bytes of a string, elements of an array or map.
pub(crate) fn len(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    match arg(args, 0) {
        Value::Str(s) => ret(Value::Int(s.len() as i64)),
        Value::Array(a) => ret(Value::Int(a.len() as i64)),
        Value::Map(m) => ret(Value::Int(m.len() as i64)),
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
