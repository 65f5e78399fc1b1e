//! Asynchronous task values (`AWAIT`, `AWAIT_ALL`).
//!
//! `concertoc` 1a8ede9 runs `async fn` calls synchronously, so `AWAIT` usually receives a
//! finished value and passes it through. Spawned tasks (`SPAWN_ASYNC`) are not implemented
//! yet and fail loudly where they are created.

use crate::error::VmError;
use crate::host::BoxFuture;
use crate::value::{Object, Value};

/// The future to wait for when `obj` is a pending task; `None` passes the value through.
pub(crate) fn await_value(obj: &Object) -> Option<BoxFuture<Result<Value, VmError>>> {
    let _ = obj;
    None
}

/// `AWAIT_ALL`: the results in input order. Without task values every input is already a
/// result.
pub(crate) fn await_all(items: Vec<Value>) -> Result<Value, BoxFuture<Result<Value, VmError>>> {
    Ok(Value::array(items))
}
