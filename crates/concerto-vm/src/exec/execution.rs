//! [`Execution`]: its state, its public entry points (`run_main`, `run_test`, `call`) and
//! the async driver that runs the loop, awaits what it suspends on, yields when fuel runs
//! out and enforces the step budget and the deadline.

use std::sync::Arc;
use std::time::Instant;

use concerto_ir::{FuncId, Program};

use super::debug;
use super::frame::{Frame, Handler};
use super::{Continuation, Ctx, ExecConfig, ExecStats, Exit, Host};
use crate::error::{ErrorKind, Location, VmError};
use crate::value::Value;
use crate::vm::Vm;

/// How many backward jumps and calls run between deadline checks and cooperative yields.
pub(super) const FUEL: u32 = 1 << 16;

/// One execution of a program.
pub struct Execution {
    /// The register file of every frame.
    pub(super) stack: Vec<Value>,
    pub(super) frames: Vec<Frame>,
    pub(super) natives: Vec<Option<Box<dyn Continuation>>>,
    pub(super) handlers: Vec<Handler>,
    pub(super) pending: Option<Result<Value, VmError>>,
    /// Where the result of a suspended instruction of a code frame goes (absolute register).
    pub(super) resume_dst: usize,
    pub(super) fuel: u32,
    /// The fuel given at the last refill (a step budget may make it smaller than [`FUEL`]).
    pub(super) grant: u32,
    pub(super) deadline: Option<Instant>,
    /// Debug-mode state (breakpoints, stepping, tracing); `None` for ordinary runs, which
    /// never look at it.
    pub(super) debug: Option<Box<debug::DebugCtl>>,
    pub(crate) ctx: Ctx,
}

impl Execution {
    /// A fresh execution of `vm`'s program with the given host components.
    pub fn new(vm: Arc<Vm>, host: Host, config: ExecConfig) -> Execution {
        let mut seed = [0u8; 8];
        host.system.random_bytes(&mut seed);
        let rng = u64::from_le_bytes(seed) | 1;
        let host_settles = host.emit.settles();
        let globals = vm.global_init.clone();
        let deadline = config
            .timeout
            .and_then(|t| host.system.monotonic().checked_add(t));
        let grant = config
            .max_steps
            .map_or(FUEL, |max| max.clamp(1, u64::from(FUEL)) as u32);
        Execution {
            deadline,
            stack: Vec::with_capacity(256),
            frames: Vec::with_capacity(64),
            natives: Vec::new(),
            handlers: Vec::new(),
            pending: None,
            resume_dst: 0,
            fuel: grant,
            grant,
            debug: None,
            ctx: Ctx {
                vm,
                globals,
                host,
                config,
                stats: ExecStats::default(),
                agent_cache: std::collections::HashMap::new(),
                watchers: Vec::new(),
                child_stats: Default::default(),
                indexed_entries: None,
                mocks: Default::default(),
                captured: None,
                rng,
                spawned: 0,
                settle_emits: host_settles,
            },
        }
    }

    /// Keeps every emit of this execution (and of the tasks it spawns) for `test_emits()`,
    /// as a test run does.
    pub fn capture_emits(&mut self) {
        self.ctx.captured.get_or_insert_with(Default::default);
    }

    /// The program.
    pub fn program(&self) -> &Arc<Program> {
        &self.ctx.vm.program
    }

    /// Counters so far.
    pub fn stats(&self) -> ExecStats {
        let mut stats = self.ctx.stats.clone();
        stats.merge(&self.ctx.child_stats.lock());
        stats
    }

    /// This execution's own counters, without its spawned tasks'.
    pub(crate) fn own_stats(&self) -> ExecStats {
        self.ctx.stats.clone()
    }

    /// Runs the `$const_*` initialisers, then the entry point, to completion. A `main` that
    /// returns `Err(e)` is reported as an unhandled error carrying `e`.
    ///
    /// # Errors
    /// The uncaught runtime error, with function, span and trace.
    pub async fn run_main(&mut self) -> Result<Value, VmError> {
        let program = self.ctx.vm.program.clone();
        for &init in &program.const_inits {
            self.call(init, Vec::new()).await?;
        }
        let entry = entry_of(&program)?;
        let result = self.call(entry, Vec::new()).await?;
        main_outcome(&program, result)
    }

    /// Runs the `$const_*` initialisers, then test `test` of the program's `tests`, with
    /// its emits captured for `test_emits()`. Run each test in an execution of its own: its
    /// globals, mocks and captured emits are this execution's.
    ///
    /// # Errors
    /// The error that failed the test, with function, span and trace; an unknown test index
    /// is an error too.
    pub async fn run_test(&mut self, test: usize) -> Result<Value, VmError> {
        let program = self.ctx.vm.program.clone();
        let Some(def) = program.tests.get(test) else {
            return Err(VmError::call_error(format!(
                "the program has no test #{test} (it has {})",
                program.tests.len()
            )));
        };
        self.capture_emits();
        for &init in &program.const_inits {
            self.call(init, Vec::new()).await?;
        }
        self.call(def.function, Vec::new()).await
    }

    /// Calls function `func` with `args` and drives it to completion, awaiting whatever it
    /// waits for.
    ///
    /// # Errors
    /// The uncaught runtime error.
    pub async fn call(&mut self, func: FuncId, args: Vec<Value>) -> Result<Value, VmError> {
        self.begin(func, args)?;
        match self.drive::<false>().await? {
            Some(value) => Ok(value),
            // Only the debug instantiation of the loop pauses.
            None => Err(VmError::new(
                ErrorKind::Internal,
                "the interpreter paused outside debug mode",
            )),
        }
    }

    /// Starts a call of `func` with `args`: a fresh register file with one frame, nothing
    /// run yet.
    pub(super) fn begin(&mut self, func: FuncId, args: Vec<Value>) -> Result<(), VmError> {
        self.reset();
        let argc = args.len();
        self.stack.extend(args);
        self.enter(func, 0, argc, false)
    }

    /// Drives the started call, awaiting whatever it waits for: `Some(value)` when the
    /// outermost frame returned, `None` when the debug loop paused (only with `DEBUG`).
    pub(super) async fn drive<const DEBUG: bool>(&mut self) -> Result<Option<Value>, VmError> {
        loop {
            // Defence in depth: a bug in the interpreter must end this execution with an
            // error, not take the host process down.
            let step =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run::<DEBUG>()))
                    .unwrap_or_else(|panic| {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "unknown panic".to_string());
                        Err(VmError::new(
                            ErrorKind::Internal,
                            format!("internal error in the interpreter (a bug): {what}"),
                        ))
                    });
            match step {
                Ok(Exit::Done(value)) => return Ok(Some(value)),
                Ok(Exit::Paused) => return Ok(None),
                Ok(Exit::Suspend(fut)) => {
                    let result = fut.await;
                    self.pending = Some(result);
                }
                Ok(Exit::Resume) => {}
                Ok(Exit::Yield) => {
                    if let Some(max) = self.ctx.config.max_steps
                        && self.ctx.stats.ticks >= max
                    {
                        let err = VmError::new(
                            ErrorKind::StepLimit,
                            format!(
                                "the program ran out of steps ({max} loop iterations and calls)"
                            ),
                        );
                        return Err(self.finish_error(err));
                    }
                    if let Some(deadline) = self.deadline
                        && self.ctx.now() >= deadline
                    {
                        let limit = self.ctx.config.timeout.unwrap_or_default();
                        let err = VmError::new(
                            ErrorKind::ExecutionTimeout,
                            format!("execution timed out after {:.3} s", limit.as_secs_f64()),
                        );
                        return Err(self.finish_error(err));
                    }
                    YieldNow(false).await;
                }
                Err(err) => {
                    let err = self.finish_error(err);
                    // A debugger keeps the frames of a failed run for inspection.
                    if !DEBUG {
                        self.reset();
                    }
                    return Err(err);
                }
            }
        }
    }

    /// Spends one unit of fuel (a backward jump or a call): `true` when that was the last of
    /// it, and more has been granted; the loop must then yield.
    #[inline(always)]
    pub(super) fn spend_fuel(&mut self) -> bool {
        self.fuel -= 1;
        if self.fuel == 0 {
            self.refuel();
            return true;
        }
        false
    }

    /// Counts the fuel just used up and grants more: [`FUEL`], or what is left of the step
    /// budget (the loop then yields exactly when the budget is spent, and `drive` stops it).
    #[cold]
    pub(super) fn refuel(&mut self) {
        self.ctx.stats.ticks += u64::from(self.grant);
        let grant = match self.ctx.config.max_steps {
            Some(max) => max
                .saturating_sub(self.ctx.stats.ticks)
                .clamp(1, u64::from(FUEL)) as u32,
            None => FUEL,
        };
        self.grant = grant;
        self.fuel = grant;
    }

    /// The `child_parent` span of the innermost native frame that has one: spans made by
    /// the code running now (its agent calls, pipelines and tasks) go under it. Entered
    /// around the calls that may make one (method calls, call sites, spawns), off the
    /// dispatch loop's inline paths.
    pub(super) fn code_parent_span(&self) -> Option<tracing::Span> {
        self.natives
            .iter()
            .rev()
            .flatten()
            .find_map(|c| c.child_parent())
            .cloned()
    }

    fn reset(&mut self) {
        self.stack.clear();
        self.frames.clear();
        self.natives.clear();
        self.handlers.clear();
        self.pending = None;
    }

    /// Runs until the outermost frame returns, the program must wait, or fuel runs out
    /// (with `DEBUG`, also when the debugger pauses).
    pub(crate) fn run<const DEBUG: bool>(&mut self) -> Result<Exit, VmError> {
        loop {
            let step = match self.pending.take() {
                Some(input) => self.deliver(input),
                None => Ok(None),
            };
            let result = match step {
                Ok(Some(exit)) => Ok(exit),
                Ok(None) => self.dispatch::<DEBUG>(),
                Err(err) => Err(err),
            };
            match result {
                Ok(Exit::Resume) => {}
                Ok(exit) => return Ok(exit),
                Err(err) => self.handle_error(err)?,
            }
        }
    }
}

/// The entry function, or an error for a file that has only tests.
pub(crate) fn entry_of(program: &Program) -> Result<FuncId, VmError> {
    program.entry.ok_or_else(|| {
        VmError::new(
            ErrorKind::Call,
            format!(
                "the program has no entry function `{}`: it has only tests (run them with \
                 `concerto test`)",
                program.metadata.entry_point
            ),
        )
    })
}

/// What `main` returning `result` means: its value, or an unhandled error when it returned
/// `Err(e)`.
pub(super) fn main_outcome(program: &Program, result: Value) -> Result<Value, VmError> {
    match result {
        Value::Err(e) => {
            let mut err = VmError::unhandled((*e).clone());
            let function = match program.entry {
                Some(entry) => program.function(entry).name.clone(),
                None => std::sync::Arc::from(program.metadata.entry_point.as_str()),
            };
            err.locate(
                Location {
                    function,
                    span: Default::default(),
                },
                Vec::new(),
            );
            Err(err)
        }
        other => Ok(other),
    }
}

/// A future that returns `Pending` once, so other tasks on the same executor get a turn.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            std::task::Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }
}
