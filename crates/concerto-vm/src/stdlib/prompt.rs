//! `std::prompt`

use crate::builtins::{ret, text_arg};
use crate::error::VmError;
use crate::exec::{Ctx, Flow};
use crate::value::Value;

/// `template(text, vars)`: replaces `${key}` with each map value, in map order.
pub(crate) fn template(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let text = text_arg("std::prompt::template", args)?;
    let vars = match args.get(1) {
        Some(Value::Map(m)) => m.entries(),
        Some(other) => {
            return Err(VmError::type_error(format!(
                "std::prompt::template expected Map, got {}",
                other.type_name()
            )));
        }
        None => {
            return Err(VmError::type_error(
                "std::prompt::template missing vars argument",
            ));
        }
    };
    let mut out = text.to_string();
    for (key, value) in vars {
        let placeholder = format!("${{{key}}}");
        if out.contains(&placeholder) {
            out = out.replace(&placeholder, &value.to_display());
        }
    }
    ret(Value::str(out))
}

/// `from_file(path)`: reads the file system, which needs the tools permission model.
pub(crate) fn from_file(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let path = text_arg("std::prompt::from_file", args)?;
    Err(VmError::not_enabled(format!(
        "std::prompt::from_file(\"{path}\") reads the file system, which this runtime does not allow yet"
    )))
}

/// `count_tokens(text)`: an estimate, `ceil(words * 4 / 3)`.
pub(crate) fn count_tokens(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let text = text_arg("std::prompt::count_tokens", args)?;
    let words = text.split_whitespace().count() as i64;
    ret(Value::Int((words * 4 + 2) / 3))
}
