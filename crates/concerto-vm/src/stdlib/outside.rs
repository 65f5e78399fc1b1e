//! `std::fs` and `std::http`: everything that reaches outside the process goes through the
//! permission model of the tools layer. Until that exists they are refused loudly.

use crate::error::VmError;
use crate::exec::{Ctx, Flow};
use crate::value::Value;

/// Any `std::fs::*` call.
pub(crate) fn fs(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let target = args.first().map(Value::to_display).unwrap_or_default();
    Err(VmError::not_enabled(format!(
        "std::fs (file `{target}`): file-system access is not enabled in this runtime"
    )))
}

/// Any `std::http::*` call.
pub(crate) fn http(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let target = args.first().map(Value::to_display).unwrap_or_default();
    Err(VmError::not_enabled(format!(
        "std::http (`{target}`): network access is not enabled in this runtime"
    )))
}
