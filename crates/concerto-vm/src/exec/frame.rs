//! Call frames and handler records, and the register file they index: a frame's registers
//! are `stack[base..base + frame_size]`, made to exist before the frame runs.

use concerto_ir::FuncId;

use super::Execution;
use crate::value::Value;

#[derive(Clone, Copy)]
pub(super) struct Frame {
    pub(super) func: FuncId,
    pub(super) pc: u32,
    pub(super) base: u32,
    /// Index into `natives` for native frames, `u32::MAX` for code frames.
    pub(super) native: u32,
}

pub(super) const NO_NATIVE: u32 = u32::MAX;
pub(super) const NATIVE_FUNC: FuncId = FuncId::new(u32::MAX);

#[derive(Clone, Copy)]
pub(super) struct Handler {
    pub(super) chain: u32,
    pub(super) frame: u32,
    /// Absolute register where a caught error lands.
    pub(super) err: u32,
}

impl Execution {
    /// Makes sure a code frame's registers exist.
    #[inline]
    pub(super) fn ensure_window(&mut self, frame: Frame) {
        let size = self.ctx.vm.program.function(frame.func).frame_size as usize;
        self.ensure(frame.base as usize + size);
    }

    /// Makes sure registers `..end` exist.
    #[inline]
    pub(super) fn ensure(&mut self, end: usize) {
        if self.stack.len() < end {
            self.stack.resize(end, Value::Nil);
        }
    }
}
