//! `std::env`

use crate::builtins::{ret, text_arg};
use crate::error::VmError;
use crate::exec::{Ctx, Flow};
use crate::value::Value;

/// `get(name)`: `Some(value)` or `None`.
pub(crate) fn get(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let name = text_arg("std::env::get", args)?;
    ret(Value::option(ctx.host.system.env_var(name).map(Value::str)))
}

/// `require(name)`: `Ok(value)` or `Err("missing environment variable: NAME (…)")`, the
/// same for an unset variable and one the host did not allow (the program cannot tell them
/// apart), with the flag that allows it.
pub(crate) fn require(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let name = text_arg("std::env::require", args)?;
    ret(match ctx.host.system.env_var(name) {
        Some(v) => Value::ok(Value::str(v)),
        None => Value::err(Value::str(format!(
            "missing environment variable: {name} (unset, or not allowed: `--allow-env {name}` \
             lets a program read it)"
        ))),
    })
}

/// `all()`: every variable as a map.
pub(crate) fn all(ctx: &mut Ctx, _: &[Value]) -> Result<Flow, VmError> {
    let vars = ctx.host.system.env_vars();
    ret(Value::map(
        vars.into_iter().map(|(k, v)| (k, Value::str(v))),
    ))
}

/// `has(name)`
pub(crate) fn has(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let name = text_arg("std::env::has", args)?;
    ret(Value::Bool(ctx.host.system.env_var(name).is_some()))
}
