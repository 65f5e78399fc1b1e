//! Debug mode of an [`Execution`]: single stepping, breakpoints, a per-op tracer and
//! inspection of frames, locals and operands.
//!
//! Debug mode runs a separate instantiation of the dispatch loop (`dispatch::<true>`) that
//! asks [`Execution::debug_before_op`] before every op whether to stop; the ordinary loop
//! has no such check. Stopping saves the frame's pc and leaves the loop with
//! `Exit::Paused`; the frames keep the whole state, so running again simply continues with
//! the op it stopped before.
//!
//! # How stepping maps to IR instructions
//! The interpreter runs register code lowered from the IR's stack code; every lowered op
//! records the IR instruction it came from ([`concerto_ir::Function::ir_pc`]). One
//! [`Execution::step`] runs **one IR instruction's worth of ops**: the op it stopped
//! before, then the following ops while control falls straight through to the next op of
//! the same IR instruction in the same frame. It stops before the first op of another IR
//! instruction, of another frame (a call entered, a return), or after any jump — so a step
//! always ends, even in a one-instruction loop, and a loop body is stepped through on every
//! iteration.
//!
//! Lowering folds some instructions into others (a `LOAD_LOCAL` or `LOAD_CONST` feeding an
//! operation becomes an operand of that operation, a `STORE_LOCAL` of a result becomes the
//! operation's destination, no-ops disappear): such instructions have no ops of their own,
//! stepping never stops at them, and a breakpoint on one stops at the next instruction that
//! has code ([`Breakpoint::stops_at`]).
//!
//! # Operands
//! The IR's operand stack does not exist in a register machine: stack position `k` is the
//! frame's register `n_slots + k` (the temporaries above the locals). The operands shown
//! ([`StepState::operands`], [`TraceEvent::top`]) are the temporaries that are *live* at the
//! op — holding a value some later op of the frame reads — lowest register (bottom of the
//! IR stack) first. Values that lowering never put in a temporary (a local read directly
//! by an operation, a constant operand) do not appear.
//!
//! Spawned tasks (`async` calls) run in their own executions at full speed; they are not
//! stepped and do not stop at breakpoints.

use std::fmt;
use std::sync::Arc;

use concerto_ir::{BinOp, FuncId, Function, Op, Program, Reg, Span};

use super::Execution;
use super::execution::{entry_of, main_outcome};
use super::frame::NO_NATIVE;
use crate::error::VmError;
use crate::value::Value;

/// A breakpoint: stop before an IR instruction of a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breakpoint {
    /// The function's full name (`main`, `Point::sum`, `$closure_0`, …).
    pub function: Arc<str>,
    /// The IR instruction index asked for.
    pub instruction: u32,
    /// The IR instruction where execution stops: `instruction` itself, or, when lowering
    /// merged it into a later one, the next instruction that has code of its own.
    pub stops_at: u32,
    func: FuncId,
}

/// Why a breakpoint cannot be set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakpointError {
    /// The program has no function of that name.
    UnknownFunction(String),
    /// The function has no executable code at or after that instruction.
    NoInstruction {
        /// The function.
        function: String,
        /// The instruction asked for.
        instruction: u32,
        /// The last instruction of the function that has code, if any.
        last: Option<u32>,
    },
}

impl fmt::Display for BreakpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BreakpointError::UnknownFunction(name) => {
                write!(f, "cannot set a breakpoint: no function named `{name}`")
            }
            BreakpointError::NoInstruction {
                function,
                instruction,
                last: Some(last),
            } => write!(
                f,
                "cannot set a breakpoint at `{function}` instruction {instruction}: the \
                 function's last executable instruction is {last}"
            ),
            BreakpointError::NoInstruction {
                function,
                instruction,
                last: None,
            } => write!(
                f,
                "cannot set a breakpoint at `{function}` instruction {instruction}: the \
                 function has no executable instructions"
            ),
        }
    }
}

impl std::error::Error for BreakpointError {}

/// Why a debug run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Nothing has run yet.
    NotStarted,
    /// A step ended.
    Step,
    /// A breakpoint's instruction is next.
    Breakpoint,
    /// The program finished: `main` returned or failed.
    Halted,
}

/// One frame of the call stack.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameInfo {
    /// The function (for a native frame: what it runs, such as a pipeline or `map`).
    pub function: Arc<str>,
    /// The IR instruction: in the innermost frame the next to run (or the one that failed),
    /// in the frames below it the call in progress. `None` for native frames.
    pub pc: Option<u32>,
    /// Source position of that instruction (line 0 when unknown).
    pub span: Span,
    /// A frame of interpreter code (pipeline driver, higher-order method), not of the
    /// program.
    pub native: bool,
}

/// The state of a debugged execution where it stopped.
#[derive(Debug, Clone)]
pub struct StepState {
    /// The function of the innermost code frame (after the end: of the last op run).
    pub function: Arc<str>,
    /// The IR instruction index of the next op to run (after the end: of the last op run).
    pub pc: u32,
    /// The lowered op index in the function's register code.
    pub op_index: usize,
    /// The lowered op to run next, when there is one.
    pub op: Option<Op>,
    /// Source position of `pc` (line 0 when unknown).
    pub span: Span,
    /// The frame's assigned locals (`self`, parameters, variables), in slot order.
    pub locals: Vec<(Arc<str>, Value)>,
    /// The live operand registers, bottom of the IR stack first (see the module docs).
    pub operands: Vec<Value>,
    /// The call stack, innermost frame first.
    pub frames: Vec<FrameInfo>,
    /// Why it stopped.
    pub reason: StopReason,
    /// The program finished; `outcome` says how.
    pub halted: bool,
    /// `main`'s value, or the uncaught error, once halted.
    pub outcome: Option<Result<Value, VmError>>,
}

/// An op about to run, as given to a tracer ([`Execution::set_tracer`]).
#[derive(Debug)]
pub struct TraceEvent<'a> {
    /// The function.
    pub function: &'a str,
    /// The IR instruction the op belongs to.
    pub pc: u32,
    /// The op's index in the function's register code.
    pub op_index: usize,
    /// The op.
    pub op: &'a Op,
    /// Number of frames below this one.
    pub depth: usize,
    /// The top of the live operand registers before the op runs, when any is live.
    pub top: Option<&'a Value>,
}

/// A tracer: called before every op of a debug run.
pub type Tracer = Box<dyn FnMut(&TraceEvent<'_>) + Send>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Stop before the next IR instruction.
    Step,
    /// Stop at breakpoints.
    Continue,
    /// Run to the end, ignoring breakpoints.
    Finish,
}

#[derive(Clone, Copy)]
struct LastOp {
    depth: usize,
    func: FuncId,
    pc: usize,
}

/// The debugger's state inside an execution.
pub(crate) struct DebugCtl {
    breakpoints: Vec<Breakpoint>,
    mode: Mode,
    /// Stopped before an op: the next check lets that op run.
    resuming: bool,
    last: Option<LastOp>,
    reason: StopReason,
    tracer: Option<Tracer>,
    /// Operand liveness by function, computed when the tracer first needs it.
    liveness: Vec<Option<Liveness>>,
    /// The running phase: each `$const_*` initialiser, then the entry point.
    phase: usize,
    started: bool,
    outcome: Option<Result<Value, VmError>>,
}

impl DebugCtl {
    fn new(n_functions: usize) -> DebugCtl {
        DebugCtl {
            breakpoints: Vec::new(),
            mode: Mode::Step,
            resuming: false,
            last: None,
            reason: StopReason::NotStarted,
            tracer: None,
            liveness: (0..n_functions).map(|_| None).collect(),
            phase: 0,
            started: false,
            outcome: None,
        }
    }
}

impl Execution {
    fn debug_ctl(&mut self) -> &mut DebugCtl {
        let n = self.ctx.vm.program.functions.len();
        self.debug.get_or_insert_with(|| Box::new(DebugCtl::new(n)))
    }

    /// Sets a breakpoint before IR instruction `instruction` of function `function` and
    /// returns it (with where it actually stops). Setting one twice is harmless.
    ///
    /// # Errors
    /// An unknown function, or an instruction past the function's last code.
    pub fn set_breakpoint(
        &mut self,
        function: &str,
        instruction: u32,
    ) -> Result<Breakpoint, BreakpointError> {
        let program = self.ctx.vm.program.clone();
        let func_id = program
            .function_id(function)
            .ok_or_else(|| BreakpointError::UnknownFunction(function.to_string()))?;
        let func = program.function(func_id);
        let stops_at = func
            .ir_pc
            .iter()
            .copied()
            .filter(|&ir| ir >= instruction)
            .min()
            .ok_or_else(|| BreakpointError::NoInstruction {
                function: function.to_string(),
                instruction,
                last: func.ir_pc.iter().copied().max(),
            })?;
        let bp = Breakpoint {
            function: func.name.clone(),
            instruction,
            stops_at,
            func: func_id,
        };
        let ctl = self.debug_ctl();
        if !ctl.breakpoints.contains(&bp) {
            ctl.breakpoints.push(bp.clone());
        }
        Ok(bp)
    }

    /// Removes the breakpoint at `function`, `instruction`; whether there was one.
    pub fn remove_breakpoint(&mut self, function: &str, instruction: u32) -> bool {
        let Some(ctl) = self.debug.as_deref_mut() else {
            return false;
        };
        let before = ctl.breakpoints.len();
        ctl.breakpoints
            .retain(|b| !(&*b.function == function && b.instruction == instruction));
        ctl.breakpoints.len() != before
    }

    /// Removes every breakpoint.
    pub fn clear_breakpoints(&mut self) {
        if let Some(ctl) = self.debug.as_deref_mut() {
            ctl.breakpoints.clear();
        }
    }

    /// The breakpoints set.
    pub fn breakpoints(&self) -> &[Breakpoint] {
        match &self.debug {
            Some(ctl) => &ctl.breakpoints,
            None => &[],
        }
    }

    /// Calls `tracer` before every op a debug run ([`Execution::step`],
    /// [`Execution::continue_to_breakpoint`], [`Execution::run_to_end`]) executes.
    pub fn set_tracer(&mut self, tracer: impl FnMut(&TraceEvent<'_>) + Send + 'static) {
        self.debug_ctl().tracer = Some(Box::new(tracer));
    }

    /// Runs one IR instruction's worth of ops (see the module docs) and returns the state
    /// before the next one. The first call starts the program (its `$const_*`
    /// initialisers, then the entry point) and stops before its first instruction without
    /// running anything. Whatever an op waits for (an agent call, a sleep) is awaited.
    /// Once the program has finished, returns the halted state again.
    pub async fn step(&mut self) -> StepState {
        self.debug_run(Mode::Step).await
    }

    /// Runs until a breakpoint's instruction is next or the program finishes. The
    /// instruction it is stopped before runs first, so calling it again at a breakpoint goes
    /// on to the next hit.
    pub async fn continue_to_breakpoint(&mut self) -> StepState {
        self.debug_run(Mode::Continue).await
    }

    /// Runs the program to its end in debug mode, ignoring breakpoints (the tracer, if any,
    /// sees every op).
    pub async fn run_to_end(&mut self) -> StepState {
        self.debug_run(Mode::Finish).await
    }

    /// Whether a debug run has finished.
    pub fn is_halted(&self) -> bool {
        self.debug.as_ref().is_some_and(|c| c.outcome.is_some())
    }

    async fn debug_run(&mut self, mode: Mode) -> StepState {
        let program = self.ctx.vm.program.clone();
        let ctl = self.debug_ctl();
        if ctl.outcome.is_some() {
            return self.debug_state();
        }
        ctl.mode = mode;
        if !ctl.started {
            ctl.started = true;
            ctl.phase = 0;
            if let Err(err) = self.begin_phase(&program, 0) {
                return self.halt(Err(err));
            }
            if mode == Mode::Step {
                // The first step stops before the first instruction.
                let ctl = self.debug_ctl();
                ctl.reason = StopReason::Step;
                ctl.resuming = true;
                return self.debug_state();
            }
        }
        loop {
            match self.drive::<true>().await {
                Ok(None) => return self.debug_state(),
                Ok(Some(value)) => {
                    let phase = self.debug_ctl().phase;
                    if phase >= program.const_inits.len() {
                        return self.halt(main_outcome(&program, value));
                    }
                    self.debug_ctl().phase = phase + 1;
                    if let Err(err) = self.begin_phase(&program, phase + 1) {
                        return self.halt(Err(err));
                    }
                }
                Err(err) => return self.halt(Err(err)),
            }
        }
    }

    /// Starts phase `idx`: constant initialiser `idx`, or the entry point after them.
    fn begin_phase(&mut self, program: &Program, idx: usize) -> Result<(), VmError> {
        let func = match program.const_inits.get(idx) {
            Some(&init) => init,
            None => entry_of(program)?,
        };
        self.begin(func, Vec::new())
    }

    fn halt(&mut self, outcome: Result<Value, VmError>) -> StepState {
        let ctl = self.debug_ctl();
        ctl.reason = StopReason::Halted;
        ctl.outcome = Some(outcome);
        self.debug_state()
    }

    /// Debug loop only: called before op `pc` of frame `fi`; `true` stops there.
    #[cold]
    #[inline(never)]
    pub(super) fn debug_before_op(&mut self, fi: usize, pc: usize) -> bool {
        let Some(ctl) = self.debug.as_deref_mut() else {
            return false;
        };
        let Some(frame) = self.frames.get(fi).copied() else {
            return false;
        };
        let program: &Program = &self.ctx.vm.program;
        let Some(func) = program.functions.get(frame.func.index()) else {
            return false;
        };
        let ir = func.ir_pc.get(pc).copied().unwrap_or(0);
        // A new IR instruction starts here unless control fell through from the previous
        // op of the same instruction in the same frame.
        let fresh = match ctl.last {
            Some(last) => {
                !(last.depth == fi
                    && last.func == frame.func
                    && last.pc + 1 == pc
                    && func.ir_pc.get(last.pc) == Some(&ir))
            }
            None => true,
        };
        if ctl.resuming {
            ctl.resuming = false;
        } else if fresh {
            let at_breakpoint = ctl
                .breakpoints
                .iter()
                .any(|b| b.func == frame.func && b.stops_at == ir);
            let stop = match ctl.mode {
                Mode::Step if at_breakpoint => Some(StopReason::Breakpoint),
                Mode::Step => Some(StopReason::Step),
                Mode::Continue if at_breakpoint => Some(StopReason::Breakpoint),
                _ => None,
            };
            if let Some(reason) = stop {
                ctl.reason = reason;
                ctl.resuming = true;
                return true;
            }
        }
        ctl.last = Some(LastOp {
            depth: fi,
            func: frame.func,
            pc,
        });
        let DebugCtl {
            tracer, liveness, ..
        } = ctl;
        if let (Some(tracer), Some(op)) = (tracer.as_mut(), func.code.get(pc)) {
            let top = match liveness.get_mut(frame.func.index()) {
                Some(slot) => slot
                    .get_or_insert_with(|| Liveness::analyse(func, program))
                    .live(pc)
                    .last(),
                None => None,
            };
            let top = top.and_then(|reg| self.stack.get(frame.base as usize + reg));
            tracer(&TraceEvent {
                function: &func.name,
                pc: ir,
                op_index: pc,
                op,
                depth: fi,
                top,
            });
        }
        false
    }

    /// The state of a debugged execution now: where it is stopped, the innermost code
    /// frame's locals and operands, the call stack, and the outcome once halted.
    pub fn debug_state(&self) -> StepState {
        let program: &Program = &self.ctx.vm.program;
        let (reason, outcome, last) = match &self.debug {
            Some(ctl) => (ctl.reason, ctl.outcome.clone(), ctl.last),
            None => (StopReason::NotStarted, None, None),
        };
        let mut state = StepState {
            function: Arc::from(""),
            pc: 0,
            op_index: 0,
            op: None,
            span: Span::default(),
            locals: Vec::new(),
            operands: Vec::new(),
            frames: self.frame_infos(),
            halted: outcome.is_some(),
            reason,
            outcome,
        };
        let top = self.frames.iter().rposition(|f| f.native == NO_NATIVE);
        let top = top.and_then(|i| self.frames.get(i).copied());
        if let Some(frame) = top
            && let Some(func) = program.functions.get(frame.func.index())
        {
            let pc = frame.pc as usize;
            let base = frame.base as usize;
            state.function = func.name.clone();
            state.op_index = pc;
            state.op = func.code.get(pc).copied();
            state.pc = func
                .ir_pc
                .get(pc)
                .or(func.ir_pc.last())
                .copied()
                .unwrap_or(0);
            state.span = func
                .spans
                .get(pc)
                .or(func.spans.last())
                .copied()
                .unwrap_or_default();
            state.locals = func
                .slot_names
                .iter()
                .enumerate()
                .filter_map(|(slot, name)| match self.stack.get(base + slot) {
                    None | Some(Value::Unset) => None,
                    Some(v) => Some((name.clone(), v.clone())),
                })
                .collect();
            state.operands = Liveness::analyse(func, program)
                .live(pc)
                .map(|reg| self.stack.get(base + reg).cloned().unwrap_or(Value::Nil))
                .collect();
        } else if let Some(last) = last
            && let Some(func) = program.functions.get(last.func.index())
        {
            // Finished: where the last op ran.
            state.function = func.name.clone();
            state.op_index = last.pc;
            state.pc = func.ir_pc.get(last.pc).copied().unwrap_or(0);
            state.span = func.spans.get(last.pc).copied().unwrap_or_default();
        } else if let Some(func) = program
            .entry
            .and_then(|entry| program.functions.get(entry.index()))
        {
            state.function = func.name.clone();
            state.pc = func.ir_pc.first().copied().unwrap_or(0);
            state.span = func.spans.first().copied().unwrap_or_default();
        }
        state
    }

    /// The call stack, innermost frame first.
    fn frame_infos(&self) -> Vec<FrameInfo> {
        let program: &Program = &self.ctx.vm.program;
        let top = self.frames.len().saturating_sub(1);
        let mut out = Vec::with_capacity(self.frames.len());
        for (idx, frame) in self.frames.iter().enumerate().rev() {
            if frame.native != NO_NATIVE {
                let name = self
                    .natives
                    .get(frame.native as usize)
                    .and_then(|c| c.as_ref())
                    .map_or_else(|| Arc::from("<native>"), |c| Arc::from(c.frame_name()));
                out.push(FrameInfo {
                    function: name,
                    pc: None,
                    span: Span::default(),
                    native: true,
                });
                continue;
            }
            let Some(func) = program.functions.get(frame.func.index()) else {
                continue;
            };
            // Below the top, `pc` is the return address: the call is the op before it.
            let pc = if idx == top {
                frame.pc as usize
            } else {
                (frame.pc as usize).saturating_sub(1)
            };
            out.push(FrameInfo {
                function: func.name.clone(),
                pc: func.ir_pc.get(pc).or(func.ir_pc.last()).copied(),
                span: func.spans.get(pc).copied().unwrap_or_default(),
                native: false,
            });
        }
        out
    }
}

/// Which operand registers (temporaries) of a function hold a value a later op reads,
/// before each op: a backward data-flow analysis of the register code.
pub(crate) struct Liveness {
    n_slots: usize,
    words: usize,
    /// `words` bit words per op: bit `t` is register `n_slots + t`.
    live_in: Vec<u64>,
}

impl Liveness {
    fn analyse(func: &Function, program: &Program) -> Liveness {
        let n_slots = func.n_slots as usize;
        let n_temps = (func.frame_size as usize).saturating_sub(n_slots);
        let words = n_temps.div_ceil(64);
        let len = func.code.len();
        let mut live = Liveness {
            n_slots,
            words,
            live_in: vec![0; len * words],
        };
        if words == 0 {
            return live;
        }
        let bit = |reg: usize| -> Option<(usize, u64)> {
            let t = reg.checked_sub(n_slots)?;
            (t < n_temps).then(|| (t / 64, 1u64 << (t % 64)))
        };
        // Successors of each op, with a register the edge writes (a caught error).
        let succ: Vec<Vec<(usize, Option<Reg>)>> = func
            .code
            .iter()
            .enumerate()
            .map(|(pc, op)| successors(pc, op, func))
            .collect();
        let mut out = vec![0u64; words];
        // A monotone analysis converges in at most one pass per loop nesting level; the
        // bound is only a guard.
        for _ in 0..=len {
            let mut changed = false;
            for pc in (0..len).rev() {
                out.iter_mut().for_each(|w| *w = 0);
                for &(s, kill) in &succ[pc] {
                    let Some(row) = live.live_in.get(s * words..(s + 1) * words) else {
                        continue;
                    };
                    // The edge itself writes `kill` (a caught error): not live before it.
                    let killed = kill.and_then(|k| bit(k as usize));
                    for (w, (o, bits)) in out.iter_mut().zip(row).enumerate() {
                        let mask = match killed {
                            Some((kw, km)) if kw == w => !km,
                            _ => !0,
                        };
                        *o |= bits & mask;
                    }
                }
                let op = &func.code[pc];
                if let Some((w, m)) = op.result_reg().and_then(|r| bit(r as usize)) {
                    out[w] &= !m;
                }
                for (first, count) in op.reads(&program.call_sites, &program.shapes) {
                    for reg in first as usize..first as usize + count as usize {
                        if let Some((w, m)) = bit(reg) {
                            out[w] |= m;
                        }
                    }
                }
                let row = &mut live.live_in[pc * words..(pc + 1) * words];
                if row != out.as_slice() {
                    row.copy_from_slice(&out);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        live
    }

    /// The live operand registers before op `pc`, lowest first.
    fn live(&self, pc: usize) -> impl DoubleEndedIterator<Item = usize> + '_ {
        let row = self
            .live_in
            .get(pc * self.words..(pc + 1) * self.words)
            .unwrap_or(&[]);
        let n_slots = self.n_slots;
        row.iter().enumerate().flat_map(move |(w, &bits)| {
            (0..64)
                .filter(move |b| bits & (1u64 << b) != 0)
                .map(move |b| n_slots + w * 64 + b)
        })
    }
}

/// Where control can go after op `pc`.
fn successors(pc: usize, op: &Op, func: &Function) -> Vec<(usize, Option<Reg>)> {
    let next = (pc + 1, None);
    match *op {
        Op::Jump { target } => vec![(target as usize, None)],
        Op::Catch { end } => vec![(end as usize, None)],
        Op::JumpIf { target, .. }
        | Op::CmpJump { target, .. }
        | Op::CmpJumpK { target, .. }
        | Op::CmpJumpI { target, .. } => vec![next, (target as usize, None)],
        Op::Return { .. } | Op::ReturnNil | Op::Throw { .. } => Vec::new(),
        Op::TryBegin { chain, err } => {
            // A caught error enters a clause right after its `Catch` op, in `err`.
            let mut out = vec![next];
            if let Some(chain) = func.chains.get(chain as usize) {
                out.extend(
                    chain
                        .clauses
                        .iter()
                        .map(|&(clause, _)| (clause as usize + 1, Some(err))),
                );
            }
            out
        }
        _ => vec![next],
    }
}

/// A short name of a lowered op in the IR's style: `LOAD_CONST`, `ADD`, `CALL_GLOBAL`,
/// `JUMP_IF_FALSE`, `LT_JUMP_IF_TRUE`, …
pub fn op_name(op: &Op) -> String {
    fn cmp_jump(op: BinOp, when: bool) -> String {
        format!(
            "{}_JUMP_IF_{}",
            op.as_str(),
            if when { "TRUE" } else { "FALSE" }
        )
    }
    let name = match *op {
        Op::LoadConst { .. } => "LOAD_CONST",
        Op::Move { .. } | Op::Take { .. } => "MOVE",
        Op::LoadLocal { .. } => "LOAD_LOCAL",
        Op::LoadGlobal { .. } => "LOAD_GLOBAL",
        Op::StoreGlobal { .. } => "STORE_GLOBAL",
        Op::Bin { op, .. } | Op::BinK { op, .. } | Op::BinI { op, .. } => op.as_str(),
        Op::Neg { .. } => "NEG",
        Op::Not { .. } => "NOT",
        Op::And { .. } => "AND",
        Op::Or { .. } => "OR",
        Op::Jump { .. } => "JUMP",
        Op::JumpIf { when: true, .. } => "JUMP_IF_TRUE",
        Op::JumpIf { when: false, .. } => "JUMP_IF_FALSE",
        Op::CmpJump { op, when, .. }
        | Op::CmpJumpK { op, when, .. }
        | Op::CmpJumpI { op, when, .. } => return cmp_jump(op, when),
        Op::Return { .. } => "RETURN",
        Op::ReturnNil => "RETURN_NIL",
        Op::Call { .. } => "CALL",
        Op::CallGlobal { .. } => "CALL_GLOBAL",
        Op::CallMethod { .. } => "CALL_METHOD",
        Op::CallSite { .. } => "CALL_SITE",
        Op::Emit { .. } => "EMIT",
        Op::EmitAwait { .. } => "EMIT_AWAIT",
        Op::TryBegin { .. } => "TRY_BEGIN",
        Op::TryEnd => "TRY_END",
        Op::Catch { .. } => "CATCH",
        Op::Throw { .. } => "THROW",
        Op::Propagate { .. } => "PROPAGATE",
        Op::BuildArray { .. } => "BUILD_ARRAY",
        Op::BuildMap { .. } => "BUILD_MAP",
        Op::BuildStruct { .. } => "BUILD_STRUCT",
        Op::FieldGet { .. } => "FIELD_GET",
        Op::FieldSet { .. } => "FIELD_SET",
        Op::IndexGet { .. } => "INDEX_GET",
        Op::IndexSet { .. } => "INDEX_SET",
        Op::Cast { .. } => "CAST",
        Op::CheckType { .. } => "CHECK_TYPE",
        Op::Await { .. } => "AWAIT",
        Op::AwaitAll { any: false, .. } => "AWAIT_ALL",
        Op::AwaitAll { any: true, .. } => "AWAIT_ANY",
        Op::SpawnAsync { .. } => "SPAWN_ASYNC",
    };
    name.to_string()
}
