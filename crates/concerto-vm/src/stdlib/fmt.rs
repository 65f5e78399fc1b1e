//! `std::fmt`

use crate::builtins::{int_arg, ret, str_arg};
use crate::error::VmError;
use crate::exec::{Ctx, Flow};
use crate::value::Value;

/// `format(template, args)`: each `{}` takes the next argument's display form; extra
/// placeholders stay as written.
pub(crate) fn format(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let template = str_arg("std::fmt::format", args, 0)?;
    let values = match args.get(1) {
        None | Some(Value::Nil) => Vec::new(),
        Some(Value::Array(a)) => a.to_vec(),
        Some(other) => {
            return Err(VmError::type_error(format!(
                "std::fmt::format expected Array as second arg, got {}",
                other.type_name()
            )));
        }
    };
    let mut out = String::with_capacity(template.len());
    let mut next = values.iter();
    let mut rest = template;
    while let Some(pos) = rest.find("{}") {
        out.push_str(&rest[..pos]);
        match next.next() {
            Some(v) => v.write_display(&mut out, 0),
            None => out.push_str("{}"),
        }
        rest = &rest[pos + 2..];
    }
    out.push_str(rest);
    ret(Value::str(out))
}

fn pad(args: &[Value], name: &str, left: bool) -> Result<Flow, VmError> {
    let s = str_arg(name, args, 0)?;
    let width = int_arg(name, args, 1)?;
    let fill = str_arg(name, args, 2)?.chars().next().unwrap_or(' ');
    let len = s.chars().count() as i64;
    if width <= len {
        return ret(Value::str(s));
    }
    if width > (1 << 24) {
        return Err(crate::builtins::limit_error(format!(
            "{name} width {width} is too large"
        )));
    }
    let padding: String = std::iter::repeat_n(fill, (width - len) as usize).collect();
    ret(Value::str(if left {
        format!("{padding}{s}")
    } else {
        format!("{s}{padding}")
    }))
}

/// `pad_left(s, width, fill)`
pub(crate) fn pad_left(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    pad(args, "std::fmt::pad_left", true)
}

/// `pad_right(s, width, fill)`
pub(crate) fn pad_right(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    pad(args, "std::fmt::pad_right", false)
}

/// `truncate(s, n)`: the first `n` characters; negative keeps the whole string.
pub(crate) fn truncate(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let s = str_arg("std::fmt::truncate", args, 0)?;
    let n = int_arg("std::fmt::truncate", args, 1)?;
    if n < 0 {
        return ret(Value::str(s));
    }
    ret(Value::str(s.chars().take(n as usize).collect::<String>()))
}

/// `indent(s, n)`: prefixes every line with `n` spaces.
pub(crate) fn indent(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let s = str_arg("std::fmt::indent", args, 0)?;
    let n = int_arg("std::fmt::indent", args, 1)?;
    if !(0..=(1 << 16)).contains(&n) {
        return Err(VmError::type_error(format!(
            "std::fmt::indent width {n} is out of range"
        )));
    }
    if s.is_empty() {
        return ret(Value::str(""));
    }
    let prefix = " ".repeat(n as usize);
    let lines: Vec<String> = s.lines().map(|line| format!("{prefix}{line}")).collect();
    ret(Value::str(lines.join("\n")))
}
