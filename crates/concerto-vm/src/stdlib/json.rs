//! `std::json`

use crate::builtins::{ret, text_arg};
use crate::error::VmError;
use crate::exec::{Ctx, Flow};
use crate::value::Value;

/// `parse(text)`: `Ok(value)` (objects become maps, in document order) or `Err(message)`.
pub(crate) fn parse(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let text = text_arg("std::json::parse", args)?;
    ret(match crate::json_io::parse(text) {
        Ok(v) => Value::ok(v),
        Err(e) => Value::err(Value::str(e.to_string())),
    })
}

/// `stringify(v)`: compact JSON.
pub(crate) fn stringify(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let Some(v) = args.first() else {
        return Err(VmError::type_error("std::json::stringify missing argument"));
    };
    ret(Value::str(crate::json_io::to_string(v)))
}

/// `stringify_pretty(v)`: two-space indented JSON.
pub(crate) fn stringify_pretty(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let Some(v) = args.first() else {
        return Err(VmError::type_error(
            "std::json::stringify_pretty missing argument",
        ));
    };
    ret(Value::str(crate::json_io::to_string_pretty(v)))
}

/// `is_valid(text)`
pub(crate) fn is_valid(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let text = text_arg("std::json::is_valid", args)?;
    ret(Value::Bool(
        serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok(),
    ))
}
