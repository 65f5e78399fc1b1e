//! `std::log`: messages go to the host's log sink.

use crate::builtins::ret;
use crate::error::VmError;
use crate::exec::{Ctx, Flow};
use crate::host::LogLevel;
use crate::value::Value;

fn log(ctx: &mut Ctx, level: LogLevel, args: &[Value]) -> Result<Flow, VmError> {
    let message = args.first().map(Value::to_display).unwrap_or_default();
    ctx.host.system.log(level, &message);
    ret(Value::Nil)
}

/// `info(msg)`
pub(crate) fn info(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    log(ctx, LogLevel::Info, args)
}

/// `warn(msg)`
pub(crate) fn warn(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    log(ctx, LogLevel::Warn, args)
}

/// `error(msg)`
pub(crate) fn error(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    log(ctx, LogLevel::Error, args)
}

/// `debug(msg)`
pub(crate) fn debug(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    log(ctx, LogLevel::Debug, args)
}
