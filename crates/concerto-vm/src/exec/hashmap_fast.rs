//! Hashmap `get`/`has`/`set` answered by the store without the generic method machinery
//! (and `map.get(k).unwrap()` without an `Option` in between); every other call on a
//! hashmap takes the general method path.

use super::Execution;
use super::call::Called;
use crate::error::VmError;
use crate::host::{BoxFuture, MapId};
use crate::methods::Method;
use crate::value::{Str, Value};

/// What `map.get(k)` found when asked on the fast path.
pub(super) enum GetNow {
    /// The value (the fused `unwrap` can use it).
    Found(Value),
    /// No such key: the plain path reports it.
    Missing,
    /// The store answers later: the `get` waits for its answer.
    Later(BoxFuture<Result<Value, VmError>>),
}

impl Execution {
    /// `map.get(k)` asked of the store: the value when it answers at once and finds the key,
    /// `Missing` when it answers at once without it (the plain path then runs and reports a
    /// missing key), `Later` when its answer comes later.
    #[inline]
    pub(super) fn hashmap_get_now(&mut self, map: MapId, base: usize) -> Result<GetNow, VmError> {
        use crate::host::Reply;
        let text;
        let key = match &self.stack[base + 1] {
            Value::Str(s) => s.as_str(),
            other => {
                text = other.to_display();
                text.as_str()
            }
        };
        match self.ctx.host.memory.hashmap_get(map, key) {
            Reply::Ready(Ok(Some(found))) => Ok(GetNow::Found(found)),
            Reply::Ready(Ok(None)) => Ok(GetNow::Missing),
            Reply::Ready(Err(e)) => Err(e.into()),
            Reply::Pending(fut) => Ok(GetNow::Later(Box::pin(async move {
                fut.await.map(Value::option).map_err(VmError::from)
            }))),
        }
    }

    /// `map.get(k)`, `map.has(k)`, `map.set(k, v)` straight to the store, without the
    /// generic method machinery; `None` for every other call.
    #[inline(never)]
    pub(super) fn hashmap_fast(
        &mut self,
        map: MapId,
        method: Method,
        argc: usize,
        base: usize,
    ) -> Option<Result<Called, VmError>> {
        use crate::host::{HostError, Reply};
        fn done<T: Send + 'static>(
            slot: &mut Value,
            r: Reply<Result<T, HostError>>,
            to_value: fn(T) -> Value,
        ) -> Result<Called, VmError> {
            match r {
                Reply::Ready(Ok(v)) => {
                    *slot = to_value(v);
                    Ok(Called::Done)
                }
                Reply::Ready(Err(e)) => Err(e.into()),
                Reply::Pending(fut) => Ok(Called::Suspend(Box::pin(async move {
                    fut.await.map(to_value).map_err(VmError::from)
                }))),
            }
        }
        let store = &*self.ctx.host.memory;
        let text;
        let key = match self.stack.get(base + 1) {
            Some(Value::Str(s)) if argc >= 1 => s.as_str(),
            Some(other) if argc >= 1 => {
                text = other.to_display();
                text.as_str()
            }
            _ => return None,
        };
        Some(match (method, argc) {
            (Method::Get, 1) => {
                let r = store.hashmap_get(map, key);
                done(&mut self.stack[base], r, Value::option)
            }
            (Method::Has, 1) => {
                let r = store.hashmap_has(map, key);
                done(&mut self.stack[base], r, Value::Bool)
            }
            (Method::Set, 2) if !crate::hashmaps::watched(&self.ctx, map) => {
                let k = match &self.stack[base + 1] {
                    Value::Str(s) => s.clone(),
                    _ => Str::from(key),
                };
                let v = self.stack[base + 2].clone();
                let r = store.hashmap_set(map, k, v);
                done(&mut self.stack[base], r, |()| Value::Nil)
            }
            _ => return None,
        })
    }
}
