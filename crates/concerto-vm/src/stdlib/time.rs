//! `std::time`

use std::time::Duration;

use crate::builtins::ret;
use crate::error::VmError;
use crate::exec::{Ctx, Flow};
use crate::value::Value;

/// `now()`: UTC time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub(crate) fn now(ctx: &mut Ctx, _: &[Value]) -> Result<Flow, VmError> {
    let ms = ctx.host.system.now_ms();
    let nanos = i128::from(ms) * 1_000_000;
    let text = match ::time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => return Err(VmError::call_error("std::time::now: clock out of range")),
    };
    ret(Value::str(text))
}

/// `now_ms()`: milliseconds since the Unix epoch.
pub(crate) fn now_ms(ctx: &mut Ctx, _: &[Value]) -> Result<Flow, VmError> {
    ret(Value::Int(ctx.host.system.now_ms()))
}

/// `sleep(ms)`: waits without blocking a thread; negative values do not wait.
pub(crate) fn sleep(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let ms = match args.first() {
        Some(Value::Int(ms)) => *ms,
        Some(other) => {
            return Err(VmError::type_error(format!(
                "std::time::sleep expected Int, got {}",
                other.type_name()
            )));
        }
        None => return Err(VmError::type_error("std::time::sleep missing argument")),
    };
    if ms <= 0 {
        return ret(Value::Nil);
    }
    Ok(Flow::Suspend(ctx.sleep(Duration::from_millis(ms as u64))))
}

/// `measure(f)`: not provided (the reference does not provide it either).
pub(crate) fn measure(_: &mut Ctx, _: &[Value]) -> Result<Flow, VmError> {
    Err(VmError::unsupported(
        "std::time::measure; use `let start = std::time::now_ms(); …; std::time::now_ms() - start`",
    ))
}
