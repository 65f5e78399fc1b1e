//! [`Debugger`]: run a program step by step, stop at breakpoints, and inspect its frames,
//! locals, operands and agents.
//!
//! ```no_run
//! use concerto_runtime::{Runtime, RuntimeConfig};
//!
//! # async fn demo() -> Result<(), concerto_runtime::RuntimeError> {
//! let mut runtime = Runtime::new_debugger(RuntimeConfig::default());
//! runtime.load_ir("program.conc-ir")?;
//! runtime.set_breakpoint("main", 5); // function "main", IR instruction 5
//! loop {
//!     let state = runtime.step().await?;
//!     println!("PC: {}, Stack: {:?}, Locals: {:?}", state.pc, state.stack, state.locals);
//!     if state.halted {
//!         break;
//!     }
//! }
//! let locals = runtime.inspect_locals();
//! let stack = runtime.inspect_stack();
//! let agents = runtime.inspect_agents();
//! # let _ = (locals, stack, agents);
//! # Ok(())
//! # }
//! ```
//!
//! A [`Debugger`] is a [`Runtime`] (it dereferences to one: `load_ir`, `on`, `metrics` all
//! work on it; a built runtime becomes one with [`Runtime::into_debugger`]) whose program runs in the interpreter's debug mode. The
//! ordinary [`Runtime::execute`] is unaffected.
//!
//! # Instructions and steps
//! `pc` and breakpoints count IR instructions, as in the `.conc-ir` file's `instructions`
//! array of each function. The interpreter runs register code lowered from them, and one
//! [`Debugger::step`] runs one IR instruction's worth of that code. Lowering folds some
//! instructions into their neighbours (a load feeding an operation, the store of its
//! result): stepping passes over those, and a breakpoint on one stops at the next
//! instruction that has code. See [`concerto_vm::StepState`] for the details.
//!
//! # Stack
//! [`DebugState::stack`] holds the operand values of the current instruction — in the
//! register machine, the live temporary registers above the locals, bottom of the IR stack
//! first. [`Debugger::inspect_stack`] is the call stack.
//!
//! # Time limit
//! `RuntimeConfig::execution_timeout` bounds each call of `step`, `continue_execution` and
//! `run_to_end` (time spent stopped is not counted). When it expires the program is
//! abandoned and halts with an execution-timeout error.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use concerto_ir::Span;
use concerto_vm::{ErrorKind, Execution, LlmCounters, StepState, StopReason, TraceEvent, VmError};

use crate::{Metrics, Runtime, RuntimeConfig, RuntimeError, Value};

/// The state of a debugged program where it stopped.
#[derive(Debug, Clone)]
pub struct DebugState {
    /// The function of the innermost frame (once halted: of the last instruction run).
    pub function: String,
    /// The IR instruction index that runs next (once halted: the last one run, or the one
    /// that failed).
    pub pc: usize,
    /// Source position of `pc` (line 0 when the IR has none).
    pub span: Span,
    /// The name of the next lowered op (`LOAD_CONST`, `ADD`, `CALL_METHOD`, …).
    pub op: Option<String>,
    /// The operand values of the innermost frame, bottom of the IR stack first.
    pub stack: Vec<Value>,
    /// The innermost frame's assigned locals (`self`, parameters, variables) by name.
    pub locals: Vec<(String, Value)>,
    /// The call stack, innermost frame first.
    pub frames: Vec<DebugFrame>,
    /// Stopped because a breakpoint's instruction is next.
    pub at_breakpoint: bool,
    /// The program finished: `value` or `error` says how.
    pub halted: bool,
    /// `main`'s value, once it returned.
    pub value: Option<Value>,
    /// The uncaught error (with function, span and trace), once the program failed.
    pub error: Option<VmError>,
}

/// One frame of the call stack.
#[derive(Debug, Clone, PartialEq)]
pub struct DebugFrame {
    /// The function (for an interpreter frame: what it runs, such as a pipeline).
    pub function: String,
    /// The IR instruction: in the innermost frame the next to run, below it the call in
    /// progress. `None` for interpreter frames.
    pub pc: Option<usize>,
    /// Source position of that instruction.
    pub span: Span,
    /// An interpreter frame (pipeline driver, higher-order method), not program code.
    pub native: bool,
}

/// An agent of the loaded program and its usage so far.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    /// The agent's name.
    pub name: String,
    /// The connection it uses, when it names one.
    pub connection: Option<String>,
    /// Its model: the agent's own, else the connection's default (overrides included).
    pub model: Option<String>,
    /// Calls, tokens, retries and cost of the debugged run so far (of the last run when
    /// none is in progress).
    pub usage: LlmCounters,
}

#[derive(Clone, Copy)]
enum Advance {
    Step,
    Continue,
    Finish,
}

type SharedTracer = Arc<Mutex<Box<dyn FnMut(&TraceEvent<'_>) + Send>>>;

/// A [`Runtime`] that runs its program under control: breakpoints, single steps,
/// inspection. Made by [`Runtime::new_debugger`] or [`Runtime::into_debugger`].
pub struct Debugger {
    runtime: Runtime,
    exec: Option<Execution>,
    /// `(function, instruction)` as asked.
    breakpoints: Vec<(String, usize)>,
    tracer: Option<SharedTracer>,
    started: Option<Instant>,
    /// The end of the run has been handled (emits flushed, hashmaps saved, metrics set).
    finished: bool,
    /// The run was abandoned when its time limit expired.
    timed_out: Option<VmError>,
    /// The journal of the run, when it is journaled ([`Debugger::journal_run`]).
    journal: Option<Arc<crate::resume::Journal>>,
}

impl Runtime {
    /// A runtime that debugs its program (see [`Debugger`]).
    pub fn new_debugger(config: RuntimeConfig) -> Debugger {
        Runtime::new(config).into_debugger()
    }

    /// This runtime, with its components and settings, as a [`Debugger`].
    pub fn into_debugger(self) -> Debugger {
        Debugger {
            runtime: self,
            exec: None,
            breakpoints: Vec::new(),
            tracer: None,
            started: None,
            finished: false,
            timed_out: None,
            journal: None,
        }
    }
}

impl Deref for Debugger {
    type Target = Runtime;
    fn deref(&self) -> &Runtime {
        &self.runtime
    }
}

impl DerefMut for Debugger {
    fn deref_mut(&mut self) -> &mut Runtime {
        &mut self.runtime
    }
}

impl Debugger {
    /// Journals the debugged run as run `run_id` in the durable state store, as
    /// [`Runtime::execute_run`] does: the effects an earlier run under that id journaled are
    /// replayed, new ones recorded. Call before the run starts (it applies from the next
    /// start).
    ///
    /// # Errors
    /// As [`Runtime::execute_run`] for a store that cannot keep the journal.
    pub async fn journal_run(&mut self, run_id: &str) -> Result<(), RuntimeError> {
        self.journal = self.runtime.open_journal(Some(run_id), None).await?;
        Ok(())
    }

    /// The runtime back.
    pub fn into_runtime(self) -> Runtime {
        self.runtime
    }

    /// Stops before IR instruction `instruction` of `function` (`main`, `Type::method`,
    /// `$closure_0`, …) whenever it is about to run. The breakpoint is checked against the
    /// program when execution starts (or now, if it has started): an unknown function or an
    /// instruction past the function's end makes the next `step`/`continue_execution` fail
    /// with an error naming it, and is then dropped.
    pub fn set_breakpoint(&mut self, function: &str, instruction: usize) {
        let bp = (function.to_string(), instruction);
        if !self.breakpoints.contains(&bp) {
            self.breakpoints.push(bp);
        }
    }

    /// Removes a breakpoint; whether there was one.
    pub fn remove_breakpoint(&mut self, function: &str, instruction: usize) -> bool {
        let before = self.breakpoints.len();
        self.breakpoints
            .retain(|(f, i)| !(f == function && *i == instruction));
        if let (Some(exec), Ok(ir)) = (self.exec.as_mut(), u32::try_from(instruction)) {
            exec.remove_breakpoint(function, ir);
        }
        self.breakpoints.len() != before
    }

    /// Removes every breakpoint.
    pub fn clear_breakpoints(&mut self) {
        self.breakpoints.clear();
        if let Some(exec) = self.exec.as_mut() {
            exec.clear_breakpoints();
        }
    }

    /// The breakpoints, as `(function, instruction)`.
    pub fn breakpoints(&self) -> &[(String, usize)] {
        &self.breakpoints
    }

    /// Calls `tracer` before every op the debugged program runs (function, IR instruction,
    /// op, depth, top of the operand registers). Set it before the run starts.
    pub fn set_tracer(&mut self, tracer: impl FnMut(&TraceEvent<'_>) + Send + 'static) {
        let tracer: SharedTracer = Arc::new(Mutex::new(Box::new(tracer)));
        if let Some(exec) = self.exec.as_mut() {
            exec.set_tracer(forward(tracer.clone()));
        }
        self.tracer = Some(tracer);
    }

    /// Runs one IR instruction and returns the state before the next. The first call
    /// starts the program and stops before its first instruction; after the end it
    /// returns the halted state again. Agent calls and other waits inside the step are
    /// awaited. A program error is not an `Err`: the state is `halted` with `error` set.
    ///
    /// # Errors
    /// No program loaded, a breakpoint that does not fit the program, a component that
    /// cannot be set up, or emits/hashmaps that cannot be written at the end.
    pub async fn step(&mut self) -> Result<DebugState, RuntimeError> {
        self.advance(Advance::Step).await
    }

    /// Runs until a breakpoint's instruction is next or the program ends.
    ///
    /// # Errors
    /// As [`Debugger::step`].
    pub async fn continue_execution(&mut self) -> Result<DebugState, RuntimeError> {
        self.advance(Advance::Continue).await
    }

    /// Runs the program to its end, ignoring breakpoints (a tracer still sees every op),
    /// and returns `main`'s value, as [`Runtime::execute`] does; what runs from here is
    /// inside a `run` span, as an execution of [`Runtime::execute`] is.
    ///
    /// # Errors
    /// [`RuntimeError::Execution`] with the uncaught error, or as [`Debugger::step`].
    pub async fn run_to_end(&mut self) -> Result<Value, RuntimeError> {
        let span = crate::concurrency::run_span(None);
        let state =
            tracing::Instrument::instrument(self.advance(Advance::Finish), span.clone()).await?;
        if let Some(err) = &state.error {
            concerto_vm::spans::record_error(&span, err.kind().as_str());
        }
        drop(span);
        match (state.error, state.value) {
            (Some(err), _) => Err(RuntimeError::Execution(err)),
            (None, Some(value)) => Ok(value),
            (None, None) => Err(RuntimeError::Execution(VmError::new(
                ErrorKind::Internal,
                "the debugged program stopped without finishing",
            ))),
        }
    }

    /// Forgets the run in progress: the next step starts the program again (breakpoints
    /// and tracer are kept).
    pub fn restart(&mut self) {
        self.exec = None;
        self.started = None;
        self.finished = false;
        self.timed_out = None;
    }

    /// The state now (before the run starts: not started, at the entry point).
    pub fn state(&self) -> DebugState {
        match &self.exec {
            Some(exec) => self.convert(exec.debug_state()),
            None => DebugState {
                function: self
                    .runtime
                    .program()
                    .and_then(|p| p.entry.map(|e| p.function(e).name.to_string()))
                    .unwrap_or_default(),
                pc: 0,
                span: Span::default(),
                op: None,
                stack: Vec::new(),
                locals: Vec::new(),
                frames: Vec::new(),
                at_breakpoint: false,
                halted: false,
                value: None,
                error: None,
            },
        }
    }

    /// The innermost frame's assigned locals by name.
    pub fn inspect_locals(&self) -> Vec<(String, Value)> {
        self.state().locals
    }

    /// The call stack, innermost frame first.
    pub fn inspect_stack(&self) -> Vec<DebugFrame> {
        self.state().frames
    }

    /// The innermost frame's operand values, bottom of the IR stack first.
    pub fn inspect_operands(&self) -> Vec<Value> {
        self.state().stack
    }

    /// The program's agents: name, connection, model, and usage so far.
    pub fn inspect_agents(&self) -> Vec<AgentInfo> {
        let Some(program) = self.runtime.program() else {
            return Vec::new();
        };
        let llm = match &self.exec {
            Some(exec) => exec.stats().llm,
            None => self.runtime.metrics().llm.clone(),
        };
        program
            .agents
            .iter()
            .map(|agent| {
                let connection = agent
                    .connection
                    .and_then(|c| program.connections.get(c as usize));
                let default_model = connection.and_then(|c| {
                    self.runtime
                        .config
                        .connection_overrides
                        .get(&c.name)
                        .and_then(|o| o.default_model.clone())
                        .or_else(|| {
                            c.config
                                .get("default_model")
                                .and_then(|m| m.as_str())
                                .map(str::to_string)
                        })
                });
                AgentInfo {
                    name: agent.decl.name.clone(),
                    connection: connection
                        .map(|c| c.name.clone())
                        .or_else(|| Some(agent.decl.connection.clone()).filter(|c| !c.is_empty())),
                    model: agent.decl.config.model.clone().or(default_model),
                    usage: llm
                        .by_agent
                        .get(&agent.decl.name)
                        .cloned()
                        .unwrap_or_default(),
                }
            })
            .collect()
    }

    async fn advance(&mut self, how: Advance) -> Result<DebugState, RuntimeError> {
        self.start()?;
        self.apply_breakpoints()?;
        if let Some(err) = &self.timed_out {
            return Ok(self.timed_out_state(err.clone()));
        }
        let timeout = self.runtime.config.execution_timeout;
        let Some(exec) = self.exec.as_mut() else {
            return Err(RuntimeError::NoProgram);
        };
        let run = async {
            match how {
                Advance::Step => exec.step().await,
                Advance::Continue => exec.continue_to_breakpoint().await,
                Advance::Finish => exec.run_to_end().await,
            }
        };
        let state = match tokio::time::timeout(timeout, run).await {
            Ok(state) => state,
            Err(_) => {
                // The run stopped mid-instruction: it cannot go on.
                let err = VmError::new(
                    ErrorKind::ExecutionTimeout,
                    format!("execution timed out after {:.3} s", timeout.as_secs_f64()),
                );
                self.timed_out = Some(err.clone());
                self.finish(true).await?;
                return Ok(self.timed_out_state(err));
            }
        };
        if state.halted {
            self.finish(matches!(state.outcome, Some(Err(_)))).await?;
        }
        Ok(self.convert(state))
    }

    /// Creates the execution on first need (or after the program was replaced).
    fn start(&mut self) -> Result<(), RuntimeError> {
        let program = self.runtime.program().ok_or(RuntimeError::NoProgram)?;
        match &self.exec {
            Some(exec) if Arc::ptr_eq(exec.program(), program) => return Ok(()),
            // `load_ir` since: start over with the new program.
            Some(_) => self.restart(),
            None => {}
        }
        // The same wiring as `Runtime::execute`, except the time limit: time spent stopped
        // must not count, so each advance is bounded instead.
        let (vm, mut host, mut config, _) = self.runtime.prepare()?;
        if let Some(journal) = &self.journal {
            host = crate::resume::journaled(host, journal);
        }
        config.timeout = None;
        let mut exec = Execution::new(vm, host, config);
        if let Some(tracer) = &self.tracer {
            exec.set_tracer(forward(tracer.clone()));
        }
        self.exec = Some(exec);
        self.started = Some(Instant::now());
        self.finished = false;
        Ok(())
    }

    /// Hands the breakpoints to the execution; the first that does not fit the program is
    /// reported (and dropped).
    fn apply_breakpoints(&mut self) -> Result<(), RuntimeError> {
        let Some(exec) = self.exec.as_mut() else {
            return Ok(());
        };
        let mut failed = None;
        self.breakpoints.retain(|(function, instruction)| {
            if failed.is_some() {
                return true;
            }
            let result = match u32::try_from(*instruction) {
                Ok(ir) => exec.set_breakpoint(function, ir).map(|_| ()),
                Err(_) => Err(concerto_vm::BreakpointError::NoInstruction {
                    function: function.clone(),
                    instruction: u32::MAX,
                    last: None,
                }),
            };
            match result {
                Ok(()) => true,
                Err(err) => {
                    failed = Some(err);
                    false
                }
            }
        });
        match failed {
            Some(err) => Err(crate::SetupError::from(err).into()),
            None => Ok(()),
        }
    }

    /// The end of the run: deliver buffered emits, save persisted hashmaps, record the
    /// metrics — once.
    async fn finish(&mut self, failed: bool) -> Result<(), RuntimeError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        // The journal's buffered records, as `Runtime::execute_run` commits them.
        let journaled = match &self.journal {
            Some(journal) => journal.finish(failed).await,
            None => Ok(()),
        };
        self.runtime.replayed = self.journal.as_ref().map_or(0, |j| j.replayed());
        if let Some(exec) = &self.exec {
            let stats = exec.stats();
            self.runtime.metrics = Metrics::default();
            let m = &mut self.runtime.metrics;
            m.execution_time_ms = self.started.map_or(0, |t| t.elapsed().as_millis() as u64);
            m.emit_count = stats.emits;
            m.errors = stats.errors_caught;
            m.agent_calls = stats.llm.by_agent.values().map(|c| c.requests).sum();
            m.tool_calls = stats.tool_calls
                + stats
                    .llm
                    .by_agent
                    .values()
                    .map(|c| c.tool_calls)
                    .sum::<u64>();
            m.llm = stats.llm;
        }
        let flushed = self.runtime.hub.flush();
        // Persisted hashmaps are saved whatever the outcome.
        let saved = self.runtime.save_hashmaps();
        journaled?;
        flushed?;
        saved
    }

    fn timed_out_state(&self, err: VmError) -> DebugState {
        let mut state = self.state();
        state.halted = true;
        state.at_breakpoint = false;
        state.value = None;
        state.error = Some(err);
        state
    }

    fn convert(&self, state: StepState) -> DebugState {
        let (value, error) = match state.outcome {
            Some(Ok(v)) => (Some(Value::from(&v)), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        DebugState {
            function: state.function.to_string(),
            pc: state.pc as usize,
            span: state.span,
            op: state.op.as_ref().map(concerto_vm::op_name),
            stack: state.operands.iter().map(Value::from).collect(),
            locals: state
                .locals
                .iter()
                .map(|(name, v)| (name.to_string(), Value::from(v)))
                .collect(),
            frames: state
                .frames
                .into_iter()
                .map(|f| DebugFrame {
                    function: f.function.to_string(),
                    pc: f.pc.map(|pc| pc as usize),
                    span: f.span,
                    native: f.native,
                })
                .collect(),
            at_breakpoint: state.reason == StopReason::Breakpoint,
            halted: state.halted,
            value,
            error,
        }
    }
}

/// A tracer for the execution that calls the shared one.
fn forward(tracer: SharedTracer) -> impl FnMut(&TraceEvent<'_>) + Send + 'static {
    move |event: &TraceEvent<'_>| {
        // A tracer that panicked once poisons the lock; keep tracing with it anyway.
        let mut guard = match tracer.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        (*guard)(event)
    }
}
