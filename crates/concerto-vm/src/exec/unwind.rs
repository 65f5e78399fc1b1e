//! Where an error goes: its location and trace, the `try` handler or intercepting native
//! frame that takes it, and the frames and handlers dropped on the way.

use std::sync::Arc;

use super::Execution;
use super::frame::NO_NATIVE;
use crate::error::{Location, VmError};
use crate::value::Value;

impl Execution {
    /// Gives an error that ends the run the location and trace of the frames it happened
    /// in, unless it has a location already.
    pub(super) fn finish_error(&mut self, mut err: VmError) -> VmError {
        if !err.has_location() {
            let (loc, trace) = self.location_and_trace();
            if let Some(loc) = loc {
                err.locate(loc, trace);
            }
        }
        err
    }

    /// Location of the innermost code frame and the trace of all frames.
    fn location_and_trace(&self) -> (Option<Location>, Vec<Location>) {
        let program = &self.ctx.vm.program;
        let mut trace = Vec::new();
        let top = self.frames.len().saturating_sub(1);
        for (idx, frame) in self.frames.iter().enumerate().rev() {
            if frame.native != NO_NATIVE {
                if let Some(Some(cont)) = self.natives.get(frame.native as usize) {
                    trace.push(Location {
                        function: Arc::from(cont.frame_name()),
                        span: Default::default(),
                    });
                }
                continue;
            }
            let func = program.function(frame.func);
            // Below the top, `pc` is the return address: the call is the op before it.
            let pc = if idx == top {
                frame.pc
            } else {
                frame.pc.saturating_sub(1)
            };
            let span = func.spans.get(pc as usize).copied().unwrap_or_default();
            trace.push(Location {
                function: func.name.clone(),
                span,
            });
        }
        let loc = trace.first().cloned();
        // Keep deep traces bounded: the innermost frames and the outermost ones.
        const KEEP: usize = 64;
        if trace.len() > KEEP {
            let tail = trace.split_off(trace.len() - KEEP / 4);
            trace.truncate(KEEP - KEEP / 4);
            trace.push(Location {
                function: Arc::from("..."),
                span: Default::default(),
            });
            trace.extend(tail);
        }
        (loc, trace)
    }

    /// Routes an error to the nearest handler (a `try` or an intercepting native frame).
    /// Returns `Err` when nothing handles it.
    pub(super) fn handle_error(&mut self, mut err: VmError) -> Result<(), VmError> {
        if !err.has_location() {
            let (loc, trace) = self.location_and_trace();
            if let Some(loc) = loc {
                err.locate(loc, trace);
            }
        }
        if !err.is_catchable() {
            return Err(err);
        }
        let value = err.to_catch_value();
        self.unwind(value, Some(err))
    }

    /// Unwinds to the nearest handler with a thrown value. `origin` is the runtime error
    /// the value stands for (given to intercepting native frames).
    pub(super) fn unwind(&mut self, value: Value, origin: Option<VmError>) -> Result<(), VmError> {
        loop {
            let handler_frame = self.handlers.last().map(|h| h.frame as usize);
            // A native frame nearer than the innermost handler gets the error first.
            let lowest = handler_frame.map_or(0, |f| f + 1);
            let mut native_at = None;
            for idx in (lowest..self.frames.len()).rev() {
                let frame = self.frames[idx];
                if frame.native != NO_NATIVE {
                    let intercepts = self
                        .natives
                        .get(frame.native as usize)
                        .and_then(|c| c.as_ref())
                        .is_some_and(|c| c.intercepts_errors());
                    if intercepts {
                        native_at = Some(idx);
                        break;
                    }
                }
            }
            if let Some(idx) = native_at {
                self.truncate_frames(idx + 1);
                self.ctx.stats.errors_caught += 1;
                let err =
                    origin.unwrap_or_else(|| VmError::unhandled(value.clone()).with_value(value));
                self.pending = Some(Err(err));
                return Ok(());
            }
            let Some(handler) = self.handlers.pop() else {
                return Err(match origin {
                    Some(err) => err,
                    None => {
                        let mut err = VmError::unhandled(value);
                        let (loc, trace) = self.location_and_trace();
                        if let Some(loc) = loc {
                            err.locate(loc, trace);
                        }
                        err
                    }
                });
            };
            self.truncate_frames(handler.frame as usize + 1);
            let frame = self.frames[handler.frame as usize];
            let vm = self.ctx.vm.clone();
            let func = vm.program.function(frame.func);
            let chain = &func.chains[handler.chain as usize];
            let type_name = value.type_name();
            let clause = chain.clauses.iter().find(|(_, filter)| match filter {
                None => true,
                Some(name) => &**vm.program.name(*name) == type_name,
            });
            if let Some(&(clause_pc, _)) = clause {
                self.ctx.stats.errors_caught += 1;
                let err = handler.err as usize;
                self.ensure(err + 1);
                self.stack[err] = value;
                if let Some(f) = self.frames.last_mut() {
                    f.pc = clause_pc + 1;
                }
                return Ok(());
            }
            // No clause matches: re-throw to the next handler out.
        }
    }

    /// Drops frames above `len`, their natives and their handlers.
    fn truncate_frames(&mut self, len: usize) {
        while self.frames.len() > len {
            if let Some(frame) = self.frames.pop()
                && frame.native != NO_NATIVE
            {
                if frame.native as usize + 1 == self.natives.len() {
                    self.natives.pop();
                } else if let Some(slot) = self.natives.get_mut(frame.native as usize) {
                    *slot = None;
                }
            }
        }
        while self
            .handlers
            .last()
            .is_some_and(|h| h.frame as usize >= len)
        {
            self.handlers.pop();
        }
        // The register file never shrinks during an execution: every live frame's window
        // stays valid (the dropped frames' registers are reused by later calls).
    }

    /// Whether a `throw` here has a `try` to go to. Without one, `throw e` is
    /// `return Err(e)` (which a pipeline stage then reports as its failure).
    pub(super) fn has_any_handler(&self) -> bool {
        !self.handlers.is_empty()
    }
}
