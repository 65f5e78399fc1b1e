//! The protocol between the interpreter and native code: what a built-in produced
//! ([`Flow`]), native continuations ([`Continuation`]) that call back into Concerto code
//! without nesting Rust stacks, what each of their steps asks for ([`Step`]), and how a
//! result is handed to the top frame (`Execution::deliver`).

use super::call::Called;
use super::frame::NO_NATIVE;
use super::{Ctx, Execution, Exit};
use crate::error::{ErrorKind, VmError};
use crate::host::BoxFuture;
use crate::value::Value;
use concerto_ir::FuncId;

/// The arguments of a call a native step asks for: up to two without an allocation (the
/// common callbacks: `map`, `filter`, `reduce`, hashmap scans).
pub(crate) type Args = smallvec::SmallVec<[Value; 2]>;

/// What a resumed native step wants next.
pub(crate) enum Step {
    /// Call `callee(args)` and resume with its result.
    Call(Value, Args),
    /// Finish, handing `value` to the frame below.
    Return(Value),
    /// Wait for a future and resume with its result.
    Suspend(BoxFuture<Result<Value, VmError>>),
    /// Call the method `func` with receiver `self_value` and `args`, and resume with its
    /// result (tool methods, schema validators).
    CallWithSelf(FuncId, Value, Args),
}

/// Interpreter-side code that calls back into Concerto code (pipelines, higher-order
/// methods). It lives in a native frame and is resumed with each callee's result.
pub(crate) trait Continuation: Send {
    /// Continues with the result of the last step (`Ok(Nil)` on start).
    fn resume(&mut self, ctx: &mut Ctx, input: Result<Value, VmError>) -> Result<Step, VmError>;
    /// Whether errors raised below this frame come to it (as `Err` input) before any
    /// outer `try` sees them.
    fn intercepts_errors(&self) -> bool {
        false
    }
    /// Name shown in traces.
    fn frame_name(&self) -> &str;
    /// The span of what this continuation does (an agent call's), which learns the call
    /// site when the continuation starts.
    fn span(&self) -> Option<&tracing::Span> {
        None
    }
    /// The span that the spans made by the Concerto code this continuation calls (agent
    /// calls, pipelines, tasks, emit-awaits) go under; a pipeline names the stage in
    /// progress.
    fn child_parent(&self) -> Option<&tracing::Span> {
        None
    }
}

/// What a built-in function or method produced.
pub(crate) enum Flow {
    /// A value, right away.
    Value(Value),
    /// A value later.
    Suspend(BoxFuture<Result<Value, VmError>>),
    /// Start a native continuation.
    Start(Box<dyn Continuation>),
}

impl Execution {
    /// Hands a result to the top frame: into the waiting register of a code frame, or to a
    /// native frame's continuation. Returns `Some(exit)` when the loop must stop.
    pub(super) fn deliver(
        &mut self,
        mut input: Result<Value, VmError>,
    ) -> Result<Option<Exit>, VmError> {
        loop {
            let Some(frame) = self.frames.last().copied() else {
                return match input {
                    Ok(v) => Ok(Some(Exit::Done(v))),
                    Err(e) => Err(e),
                };
            };
            if frame.native == NO_NATIVE {
                return match input {
                    Ok(v) => {
                        self.ensure_window(frame);
                        let dst = self.resume_dst;
                        self.ensure(dst + 1);
                        self.stack[dst] = v;
                        Ok(None)
                    }
                    Err(e) => Err(e),
                };
            }
            let slot = frame.native as usize;
            let Some(mut cont) = self.natives.get_mut(slot).and_then(Option::take) else {
                return Err(VmError::new(
                    ErrorKind::Internal,
                    "native frame lost its continuation",
                ));
            };
            let step = cont.resume(&mut self.ctx, input);
            self.natives[slot] = Some(cont);
            match step {
                Err(err) => {
                    self.pop_native_frame();
                    return Err(err);
                }
                Ok(Step::Return(v)) => {
                    let base = frame.base as usize;
                    self.pop_native_frame();
                    match self.frames.last().copied() {
                        Some(below) if below.native == NO_NATIVE => {
                            self.ensure_window(below);
                            self.stack[base] = v;
                            return Ok(None);
                        }
                        _ => input = Ok(v),
                    }
                }
                Ok(Step::Suspend(fut)) => return Ok(Some(Exit::Suspend(fut))),
                Ok(step @ (Step::Call(..) | Step::CallWithSelf(..))) => {
                    // The native frame's calls use the registers just above its base.
                    let scratch = frame.base as usize + 1;
                    let called = match step {
                        Step::Call(callee, mut args) => {
                            let argc = args.len();
                            self.ensure(scratch + argc + 1);
                            place_args(&mut self.stack[scratch..scratch + argc], &mut args);
                            self.call_value(callee, scratch, argc)
                        }
                        Step::CallWithSelf(func, receiver, mut args) => {
                            let argc = args.len();
                            self.ensure(scratch + argc + 2);
                            self.stack[scratch] = receiver;
                            place_args(&mut self.stack[scratch + 1..scratch + 1 + argc], &mut args);
                            self.enter(func, scratch, argc, true)
                                .map(|()| Called::Entered)
                        }
                        _ => Err(VmError::new(ErrorKind::Internal, "unexpected native step")),
                    };
                    match called {
                        Ok(Called::Entered) => return Ok(None),
                        Ok(Called::Done) => input = Ok(std::mem::take(&mut self.stack[scratch])),
                        Ok(Called::Suspend(fut)) => return Ok(Some(Exit::Suspend(fut))),
                        Ok(Called::Native) => {
                            input = self.pending.take().unwrap_or(Ok(Value::Nil));
                        }
                        Err(err) => input = Err(err),
                    }
                    if let Err(err) = &input {
                        // An error from a call made by a continuation goes back to it only
                        // when it intercepts errors; otherwise it unwinds normally.
                        let intercepts = self
                            .natives
                            .get(slot)
                            .and_then(|c| c.as_ref())
                            .is_some_and(|c| c.intercepts_errors());
                        if !intercepts || !err.is_catchable() {
                            return Err(err.clone());
                        }
                    }
                }
            }
        }
    }

    fn pop_native_frame(&mut self) {
        if let Some(frame) = self.frames.pop() {
            if frame.native as usize + 1 == self.natives.len() {
                self.natives.pop();
            } else if let Some(slot) = self.natives.get_mut(frame.native as usize) {
                *slot = None;
            }
            let depth = self.frames.len() as u32;
            while self.handlers.last().is_some_and(|h| h.frame >= depth) {
                self.handlers.pop();
            }
        }
    }
}

/// Moves `args` into the registers `slots` (as many as there are arguments), leaving `nil`
/// behind; cheaper than consuming the inline vector through its iterator.
#[inline]
fn place_args(slots: &mut [Value], args: &mut Args) {
    for (slot, a) in slots.iter_mut().zip(args.iter_mut()) {
        std::mem::swap(slot, a);
    }
}
