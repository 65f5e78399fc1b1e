//! [`Execution`]: one run of a program — value stack, call frames, handlers, globals — and
//! the dispatch loop.
//!
//! The loop is synchronous and allocation-free for ordinary instructions. When an
//! instruction needs the outside world (an agent call, a slow store, emit-await, a sleep) it
//! returns [`Exit::Suspend`] with a future; the async driver ([`Execution::call`]) awaits it
//! without blocking a thread and resumes the loop with the result.
//!
//! Frames share one register file: a frame's registers are `stack[base..base + frame_size]`
//! (locals, then operand temporaries). A call's arguments sit in consecutive registers of
//! the caller starting at the call's base, which becomes the callee's register 0, so a call
//! moves no values; the callee's result is written back to that base register. The register
//! file only grows during an execution, so a frame's window, once made to exist, stays valid
//! while the frame lives (registers of finished frames are reused by later calls).

use std::sync::Arc;
use std::time::{Duration, Instant};

use concerto_ir::{BinOp, CastTarget, FuncId, GlobalKind, Op, Program};

use crate::builtins;
use crate::error::{ErrorKind, Location, VmError};
use crate::host::{
    BoxFuture, Connections, EmitSink, MemoryStore, SchemaValidator, System, ToolHost,
};
use crate::methods::{self, Method};
use crate::ops;
use crate::value::{EnumObj, Str, StructObj, Value};
use crate::vm::{ShapeKind, Vm};

pub(crate) mod debug;

/// The host components an execution talks to.
#[derive(Clone)]
pub struct Host {
    /// Where emits go.
    pub emit: Arc<dyn EmitSink>,
    /// LLM connections.
    pub connections: Arc<dyn Connections>,
    /// Hashmaps, ledgers, memories.
    pub memory: Arc<dyn MemoryStore>,
    /// Schema validation.
    pub schema: Arc<dyn SchemaValidator>,
    /// Host tools.
    pub tools: Arc<dyn ToolHost>,
    /// Console, environment, clock.
    pub system: Arc<dyn System>,
}

/// What `map.get(k)` found when asked on the fast path.
enum GetNow {
    /// The value (the fused `unwrap` can use it).
    Found(Value),
    /// No such key: the plain path reports it.
    Missing,
    /// The store answers later: the `get` waits for its answer.
    Later(BoxFuture<Result<Value, VmError>>),
}

/// `Some(duration)` for a timeout operand in milliseconds (0: none).
fn millis(ms: u32) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
}

/// Limits and switches of one execution.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// Maximum number of nested calls.
    pub max_call_depth: usize,
    /// When set, the execution stops with [`ErrorKind::ExecutionTimeout`] this long after it
    /// was created.
    pub timeout: Option<Duration>,
    /// Maximum length of a string or array the program may build (elements/bytes).
    pub max_collection_len: usize,
    /// When set, the execution stops with [`ErrorKind::StepLimit`] once it has taken this many
    /// steps. A step is a loop iteration or a call (every backward jump and every call: the
    /// yield counter's unit), so the budget is deterministic — the same program and input
    /// stop at the same point — and bounds any program, since code without loops or calls
    /// ends by itself. Each spawned task has a budget of its own.
    pub max_steps: Option<u64>,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            max_call_depth: 1000,
            timeout: None,
            max_collection_len: 1 << 30,
            max_steps: None,
        }
    }
}

/// Counters an execution keeps.
#[derive(Debug, Clone, Default)]
pub struct ExecStats {
    /// LLM usage by agent and connection.
    pub llm: crate::agent::LlmStats,
    /// Emits delivered.
    pub emits: u64,
    /// Errors caught by `try`/`catch` (or by a pipeline stage).
    pub errors_caught: u64,
    /// Steps taken: backward jumps and calls executed (the fuel counter), counted each time
    /// a grant of fuel is used up.
    pub ticks: u64,
}

impl ExecStats {
    /// Adds `other`'s counters to these (a finished child execution's, a task's).
    pub fn merge(&mut self, other: &ExecStats) {
        self.llm.merge(&other.llm);
        self.emits += other.emits;
        self.errors_caught += other.errors_caught;
        self.ticks += other.ticks;
    }
}

/// What a resumed native step wants next.
pub(crate) enum Step {
    /// Call `callee(args)` and resume with its result.
    Call(Value, Vec<Value>),
    /// Finish, handing `value` to the frame below.
    Return(Value),
    /// Wait for a future and resume with its result.
    Suspend(BoxFuture<Result<Value, VmError>>),
    /// Call the method `func` with receiver `self_value` and `args`, and resume with its
    /// result (tool methods, schema validators).
    CallWithSelf(FuncId, Value, Vec<Value>),
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

/// The emits of a test run so far: (channel, payload), in order.
pub(crate) type CapturedEmits = Arc<parking_lot::Mutex<Vec<(Str, Value)>>>;

/// Execution state a built-in may use.
pub(crate) struct Ctx {
    pub(crate) vm: Arc<Vm>,
    pub(crate) globals: Vec<Value>,
    pub(crate) host: Host,
    pub(crate) config: ExecConfig,
    pub(crate) stats: ExecStats,
    /// Replies kept by agents' `@cache`, by request.
    pub(crate) agent_cache: std::collections::HashMap<String, (crate::host::ChatResponse, Instant)>,
    /// Hashmap change callbacks registered by this execution's code.
    pub(crate) watchers: Vec<crate::hashmaps::Watcher>,
    /// Counters of finished spawned tasks (shared with the tasks they spawn in turn).
    pub(crate) child_stats: crate::task::ChildStats,
    /// The entries last read for indexing a hashmap by position (see
    /// [`crate::host::MemoryStore::hashmap_version`]).
    pub(crate) indexed_entries: Option<crate::hashmaps::IndexedEntries>,
    /// Models answered by `MOCK_MODEL` in this execution (shared with its spawned tasks).
    pub(crate) mocks: Arc<parking_lot::Mutex<rustc_hash::FxHashMap<u32, concerto_ir::MockReply>>>,
    /// Emits kept for `test_emits()` (a test run only; shared with spawned tasks).
    pub(crate) captured: Option<CapturedEmits>,
    rng: u64,
}

impl Ctx {
    /// The program.
    pub(crate) fn program(&self) -> &Arc<Program> {
        &self.vm.program
    }

    /// A pseudo-random u64 (xorshift, seeded from the host).
    pub(crate) fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// Delivers an emit.
    pub(crate) fn emit(&mut self, channel: &str, payload: &Value) -> Result<(), VmError> {
        self.stats.emits += 1;
        if let Some(captured) = &self.captured {
            captured
                .lock()
                .push((Str::from(channel), payload.deep_copy()));
        }
        self.host.emit.emit(channel, payload).map_err(VmError::from)
    }

    /// Elapsed milliseconds since `start` (for lifecycle emits).
    pub(crate) fn elapsed_ms(&self, start: Instant) -> i64 {
        self.host
            .system
            .monotonic()
            .saturating_duration_since(start)
            .as_millis() as i64
    }

    /// Now, on the host's monotonic clock.
    pub(crate) fn now(&self) -> Instant {
        self.host.system.monotonic()
    }

    /// A future that sleeps.
    pub(crate) fn sleep(&self, duration: Duration) -> BoxFuture<Result<Value, VmError>> {
        let fut = self.host.system.sleep(duration);
        Box::pin(async move {
            fut.await;
            Ok(Value::Nil)
        })
    }
}

#[derive(Clone, Copy)]
struct Frame {
    func: FuncId,
    pc: u32,
    base: u32,
    /// Index into `natives` for native frames, `u32::MAX` for code frames.
    native: u32,
}

const NO_NATIVE: u32 = u32::MAX;
const NATIVE_FUNC: FuncId = FuncId::MAX;

#[derive(Clone, Copy)]
struct Handler {
    chain: u32,
    frame: u32,
    /// Absolute register where a caught error lands.
    err: u32,
}

/// How the dispatch loop stopped.
pub(crate) enum Exit {
    /// The outermost frame returned.
    Done(Value),
    /// Waiting for the outside world.
    Suspend(BoxFuture<Result<Value, VmError>>),
    /// Fuel ran out: give other tasks a turn, then continue.
    Yield,
    /// A native frame was started: process the pending input and continue (internal to
    /// [`Execution::run`]).
    Resume,
    /// Debug mode only: stopped before an op (a step ended or a breakpoint was reached).
    /// The frames hold the complete state; running again continues with that op.
    Paused,
}

/// How many backward jumps and calls run between deadline checks and cooperative yields.
const FUEL: u32 = 1 << 16;

/// One execution of a program.
pub struct Execution {
    /// The register file of every frame.
    stack: Vec<Value>,
    frames: Vec<Frame>,
    natives: Vec<Option<Box<dyn Continuation>>>,
    handlers: Vec<Handler>,
    pending: Option<Result<Value, VmError>>,
    /// Where the result of a suspended instruction of a code frame goes (absolute register).
    resume_dst: usize,
    fuel: u32,
    /// The fuel given at the last refill (a step budget may make it smaller than [`FUEL`]).
    grant: u32,
    deadline: Option<Instant>,
    /// Debug-mode state (breakpoints, stepping, tracing); `None` for ordinary runs, which
    /// never look at it.
    debug: Option<Box<debug::DebugCtl>>,
    pub(crate) ctx: Ctx,
}

/// Outcome of dispatching a call.
enum Called {
    /// A code frame was pushed; the loop continues in it.
    Entered,
    /// The result is already in the call's base register.
    Done,
    /// The callee must wait; the result goes to the call's base register.
    Suspend(BoxFuture<Result<Value, VmError>>),
    /// A native frame was pushed and its first step must run.
    Native,
}

impl Execution {
    /// A fresh execution of `vm`'s program with the given host components.
    pub fn new(vm: Arc<Vm>, host: Host, config: ExecConfig) -> Execution {
        let mut seed = [0u8; 8];
        host.system.random_bytes(&mut seed);
        let rng = u64::from_le_bytes(seed) | 1;
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
    fn begin(&mut self, func: FuncId, args: Vec<Value>) -> Result<(), VmError> {
        self.reset();
        let argc = args.len();
        self.stack.extend(args);
        self.enter(func, 0, argc, false)
    }

    /// Drives the started call, awaiting whatever it waits for: `Some(value)` when the
    /// outermost frame returned, `None` when the debug loop paused (only with `DEBUG`).
    async fn drive<const DEBUG: bool>(&mut self) -> Result<Option<Value>, VmError> {
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

    /// Counts the fuel just used up and grants more: [`FUEL`], or what is left of the step
    /// budget (the loop then yields exactly when the budget is spent, and `drive` stops it).
    #[cold]
    fn refuel(&mut self) {
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

    fn reset(&mut self) {
        self.stack.clear();
        self.frames.clear();
        self.natives.clear();
        self.handlers.clear();
        self.pending = None;
    }

    fn finish_error(&mut self, mut err: VmError) -> VmError {
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

    /// Makes sure a code frame's registers exist.
    #[inline]
    fn ensure_window(&mut self, frame: Frame) {
        let size = self.ctx.vm.program.function(frame.func).frame_size as usize;
        self.ensure(frame.base as usize + size);
    }

    /// Makes sure registers `..end` exist.
    #[inline]
    fn ensure(&mut self, end: usize) {
        if self.stack.len() < end {
            self.stack.resize(end, Value::Nil);
        }
    }

    /// Pushes a code frame for `func` whose register 0 is `base`. The `argc` arguments are in
    /// `base..base + argc`; with `has_receiver` the method receiver is in `base` and the
    /// arguments follow it.
    #[inline]
    fn enter(
        &mut self,
        func: FuncId,
        base: usize,
        argc: usize,
        has_receiver: bool,
    ) -> Result<(), VmError> {
        let vm = &self.ctx.vm;
        let f = vm.program.function(func);
        let has_self = f.self_slot.is_some();
        if argc != f.n_params as usize
            || self.frames.len() >= self.ctx.config.max_call_depth
            || (has_self && !has_receiver)
        {
            return Err(self.enter_error(func, argc, has_receiver));
        }
        let frame_size = f.frame_size as usize;
        let first_local = usize::from(has_self) + argc;
        let n_slots = f.n_slots as usize;
        if has_receiver && !has_self {
            // The method does not use `self`: move the arguments down over the receiver.
            self.ensure(base + argc + 1);
            for i in 0..argc {
                self.stack.swap(base + i, base + i + 1);
            }
        }
        self.ensure(base + frame_size);
        for slot in &mut self.stack[base + first_local..base + n_slots] {
            *slot = Value::Unset;
        }
        self.frames.push(Frame {
            func,
            pc: 0,
            base: base as u32,
            native: NO_NATIVE,
        });
        Ok(())
    }

    #[cold]
    fn enter_error(&mut self, func: FuncId, argc: usize, has_receiver: bool) -> VmError {
        let f = self.ctx.vm.program.function(func);
        if argc != f.n_params as usize {
            return VmError::new(
                ErrorKind::Arity,
                format!(
                    "call error: `{}` takes {} argument{}, got {argc}",
                    f.name,
                    f.n_params,
                    if f.n_params == 1 { "" } else { "s" }
                ),
            );
        }
        if f.self_slot.is_some() && !has_receiver {
            return VmError::undefined("self");
        }
        VmError::new(
            ErrorKind::CallDepth,
            format!(
                "max call depth exceeded ({})",
                self.ctx.config.max_call_depth
            ),
        )
    }

    /// Dispatches a call of `callee` with the arguments in `base..base + argc`; the result
    /// goes to `base`.
    fn call_value(&mut self, callee: Value, base: usize, argc: usize) -> Result<Called, VmError> {
        match callee {
            Value::Func(f) => {
                self.enter(f.id, base, argc, false)?;
                Ok(Called::Entered)
            }
            Value::Builtin(id) => {
                let flow = if (id as usize) < builtins::BUILTIN_COUNT {
                    builtins::call(id, &mut self.ctx, &self.stack[base..base + argc])
                } else {
                    self.construct_variant(id, base, argc)
                };
                self.flow(flow?, base)
            }
            Value::Str(name) => {
                let vm = &self.ctx.vm;
                let fid = match vm.callable_consts.get(&name.addr()) {
                    Some(&f) => Some(f),
                    None => vm.callable_names.get(name.as_str()).copied(),
                };
                match fid {
                    Some(fid) => {
                        self.enter(fid, base, argc, false)?;
                        Ok(Called::Entered)
                    }
                    None => Err(VmError::type_error("cannot call value of type String")),
                }
            }
            Value::Ref(r) if r.kind == crate::value::RefKind::Agent => {
                // `Agent(prompt)` is `Agent.execute(prompt)`.
                let mut args = Vec::with_capacity(argc + 1);
                args.push(Value::Ref(r));
                args.extend(self.stack[base..base + argc].iter().cloned());
                let flow = methods::call_builtin_method(
                    &mut self.ctx,
                    Method::Execute,
                    "execute",
                    None,
                    &args,
                );
                self.flow(flow?, base)
            }
            Value::Path(path) => {
                if path.starts_with("std::") {
                    let module = path.rsplit_once("::").map(|(m, _)| m).unwrap_or("");
                    if builtins::is_std_module(module) {
                        Err(VmError::call_error(format!("unknown function '{path}'")))
                    } else {
                        Err(VmError::call_error(format!(
                            "unknown stdlib module: {module}"
                        )))
                    }
                } else {
                    Err(VmError::new(
                        ErrorKind::Name,
                        format!("name error: undefined function '{path}'"),
                    ))
                }
            }
            other => Err(VmError::type_error(format!(
                "cannot call value of type {}",
                other.type_name()
            ))),
        }
    }

    fn construct_variant(&mut self, ctor: u32, base: usize, argc: usize) -> Result<Flow, VmError> {
        let vm = &self.ctx.vm;
        let Some((c_ty, c_variant)) =
            builtins::enum_ctor_of(ctor).filter(|(ty, _)| (*ty as usize) < vm.program.types.len())
        else {
            return Err(VmError::new(
                ErrorKind::Internal,
                "unknown enum constructor",
            ));
        };
        let ty = &vm.program.types[c_ty as usize];
        let concerto_ir::TypeDefKind::Enum { variants } = &ty.kind else {
            return Err(VmError::new(
                ErrorKind::Internal,
                "enum constructor of a non-enum",
            ));
        };
        let variant = &match variants.get(c_variant as usize) {
            Some(v) => v,
            None => {
                return Err(VmError::new(
                    ErrorKind::Internal,
                    "unknown enum constructor",
                ));
            }
        };
        let expected = variant.fields.as_ref().map_or(0, |f| f.len());
        if argc != expected {
            return Err(VmError::new(
                ErrorKind::Arity,
                format!(
                    "call error: `{}::{}` takes {expected} argument{}, got {argc}",
                    ty.name,
                    variant.name,
                    if expected == 1 { "" } else { "s" },
                ),
            ));
        }
        let payload: Vec<Value> = self.stack[base..base + argc].to_vec();
        Ok(Flow::Value(Value::Enum(Arc::new(EnumObj {
            type_name: ty.name.clone(),
            variant: variant.name.clone(),
            type_id: c_ty,
            variant_id: c_variant,
            field_names: None,
            payload,
        }))))
    }

    /// Turns a built-in's flow into a call outcome; a value goes to register `base`.
    fn flow(&mut self, flow: Flow, base: usize) -> Result<Called, VmError> {
        match flow {
            Flow::Value(v) => {
                self.ensure(base + 1);
                self.stack[base] = v;
                Ok(Called::Done)
            }
            Flow::Suspend(fut) => Ok(Called::Suspend(fut)),
            Flow::Start(cont) => {
                if self.frames.len() >= self.ctx.config.max_call_depth {
                    return Err(VmError::new(
                        ErrorKind::CallDepth,
                        format!(
                            "max call depth exceeded ({})",
                            self.ctx.config.max_call_depth
                        ),
                    ));
                }
                let idx = self.natives.len() as u32;
                self.natives.push(Some(cont));
                self.ensure(base + 1);
                self.frames.push(Frame {
                    func: NATIVE_FUNC,
                    pc: 0,
                    base: base as u32,
                    native: idx,
                });
                self.pending = Some(Ok(Value::Nil));
                Ok(Called::Native)
            }
        }
    }

    /// Hands a result to the top frame: into the waiting register of a code frame, or to a
    /// native frame's continuation. Returns `Some(exit)` when the loop must stop.
    fn deliver(&mut self, mut input: Result<Value, VmError>) -> Result<Option<Exit>, VmError> {
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
                        Step::Call(callee, args) => {
                            let argc = args.len();
                            self.ensure(scratch + argc + 1);
                            for (i, a) in args.into_iter().enumerate() {
                                self.stack[scratch + i] = a;
                            }
                            self.call_value(callee, scratch, argc)
                        }
                        Step::CallWithSelf(func, receiver, args) => {
                            let argc = args.len();
                            self.ensure(scratch + argc + 2);
                            self.stack[scratch] = receiver;
                            for (i, a) in args.into_iter().enumerate() {
                                self.stack[scratch + 1 + i] = a;
                            }
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

    /// Routes an error to the nearest handler (a `try` or an intercepting native frame).
    /// Returns `Err` when nothing handles it.
    fn handle_error(&mut self, mut err: VmError) -> Result<(), VmError> {
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
    fn unwind(&mut self, value: Value, origin: Option<VmError>) -> Result<(), VmError> {
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
    fn has_any_handler(&self) -> bool {
        !self.handlers.is_empty()
    }

    /// Returns `value` from the current code frame (the general path).
    fn do_return(&mut self, value: Value) -> Result<Option<Exit>, VmError> {
        let Some(frame) = self.frames.pop() else {
            return Ok(Some(Exit::Done(value)));
        };
        let depth = self.frames.len() as u32;
        while self.handlers.last().is_some_and(|h| h.frame >= depth) {
            self.handlers.pop();
        }
        let base = frame.base as usize;
        match self.frames.last().copied() {
            None => {
                self.stack.clear();
                Ok(Some(Exit::Done(value)))
            }
            Some(below) if below.native == NO_NATIVE => {
                self.ensure_window(below);
                self.stack[base] = value;
                Ok(None)
            }
            Some(_) => self.deliver(Ok(value)),
        }
    }

    /// The dispatch loop. `DEBUG` is a separate instantiation for debug mode (stepping,
    /// breakpoints, tracing): it asks the debugger before every op whether to pause. The
    /// ordinary instantiation has no such check (the `if DEBUG` blocks compile away).
    fn dispatch<const DEBUG: bool>(&mut self) -> Result<Exit, VmError> {
        let vm = self.ctx.vm.clone();
        let program: &Program = &vm.program;
        let max_depth = self.ctx.config.max_call_depth;
        'frames: loop {
            let Some(&frame) = self.frames.last() else {
                return Ok(Exit::Done(Value::Nil));
            };
            if frame.native != NO_NATIVE {
                // A native frame on top with nothing pending: it is waiting for a value
                // that is not coming; treat as a fault.
                return Err(VmError::new(
                    ErrorKind::Internal,
                    "native frame resumed without input",
                ));
            }
            // Every register of the frame exists from here on (the verifier bounds register
            // operands by the frame size), so register accesses below cannot fail.
            self.ensure_window(frame);
            // The current frame, kept in locals; calls and returns between code frames switch
            // them in place.
            let mut fi = self.frames.len() - 1;
            let mut func = program.function(frame.func);
            let mut code: &[Op] = &func.code;
            let mut base = frame.base as usize;
            let mut pc = frame.pc as usize;

            macro_rules! save_pc {
                () => {
                    self.frames[fi].pc = pc as u32
                };
            }
            // Runs a fallible expression; on error records the faulting op first.
            macro_rules! tri {
                ($e:expr) => {
                    match $e {
                        Ok(v) => v,
                        Err(err) => {
                            self.frames[fi].pc = (pc - 1) as u32;
                            return Err(err);
                        }
                    }
                };
            }
            macro_rules! reg {
                ($r:expr) => {
                    self.stack[base + $r as usize]
                };
            }
            // Writes an Int into a register, in place when it already holds one.
            macro_rules! set_int {
                ($r:expr, $v:expr) => {{
                    let v = $v;
                    match &mut reg!($r) {
                        Value::Int(slot) => *slot = v,
                        slot => *slot = Value::Int(v),
                    }
                }};
            }
            // A jump, spending fuel when it goes backwards (a loop).
            macro_rules! jump {
                ($target:expr) => {{
                    let target = $target as usize;
                    if target < pc {
                        self.fuel -= 1;
                        if self.fuel == 0 {
                            self.refuel();
                            pc = target;
                            save_pc!();
                            return Ok(Exit::Yield);
                        }
                    }
                    pc = target;
                }};
            }
            // Returns `$v` from this frame: straight back into a code frame below, or through
            // `do_return` when a native frame or the end of the execution waits.
            macro_rules! ret {
                ($v:expr) => {{
                    let v = $v;
                    let plain = fi >= 1
                        && self.frames[fi - 1].native == NO_NATIVE
                        && self.handlers.last().is_none_or(|h| (h.frame as usize) < fi);
                    if plain {
                        self.frames.pop();
                        fi -= 1;
                        let caller = self.frames[fi];
                        let caller_func = program.function(caller.func);
                        // The callee's registers stay allocated (the next call reuses them);
                        // the caller's window lies below them and is intact.
                        store(&mut self.stack[base], v);
                        func = caller_func;
                        code = &func.code;
                        base = caller.base as usize;
                        pc = caller.pc as usize;
                        continue;
                    }
                    save_pc!();
                    match self.do_return(v)? {
                        Some(exit) => return Ok(exit),
                        None => continue 'frames,
                    }
                }};
            }
            // After a call: go on inline, switch to the new frame, or leave the loop.
            macro_rules! finish_call {
                ($called:expr, $dst:expr) => {{
                    self.fuel -= 1;
                    let out_of_fuel = self.fuel == 0;
                    if out_of_fuel {
                        self.refuel();
                    }
                    match $called {
                        Called::Done if !out_of_fuel => {}
                        Called::Done => return Ok(Exit::Yield),
                        Called::Entered if out_of_fuel => return Ok(Exit::Yield),
                        Called::Entered => continue 'frames,
                        Called::Suspend(fut) => {
                            self.resume_dst = $dst;
                            return Ok(Exit::Suspend(fut));
                        }
                        Called::Native => return Ok(Exit::Resume),
                    }
                }};
            }

            // Enters code function `$fid` (`$callee`) whose register 0 is `$at` and whose
            // `$argc` parameters (after `self` when it has one) are already in place, without
            // leaving the loop. Falls through when the call depth is exhausted (the general
            // path then reports it).
            macro_rules! enter_inline {
                ($fid:expr, $callee:expr, $at:expr, $argc:expr) => {{
                    let callee: &concerto_ir::Function = $callee;
                    let at: usize = $at;
                    if self.frames.len() < max_depth {
                        save_pc!();
                        let size = callee.frame_size as usize;
                        if self.stack.len() < at + size {
                            self.stack.resize(at + size, Value::Nil);
                        }
                        let first_local = at + usize::from(callee.self_slot.is_some()) + $argc;
                        for slot in &mut self.stack[first_local..at + callee.n_slots as usize] {
                            *slot = Value::Unset;
                        }
                        self.frames.push(Frame {
                            func: $fid,
                            pc: 0,
                            base: at as u32,
                            native: NO_NATIVE,
                        });
                        self.fuel -= 1;
                        if self.fuel == 0 {
                            self.refuel();
                            return Ok(Exit::Yield);
                        }
                        fi += 1;
                        func = callee;
                        code = &func.code;
                        base = at;
                        pc = 0;
                        continue;
                    }
                }};
            }

            loop {
                let Some(&op) = code.get(pc) else {
                    // Running off the end returns nil.
                    ret!(Value::Nil)
                };
                if DEBUG && self.debug_before_op(fi, pc) {
                    // Stop before this op; running again starts with it.
                    save_pc!();
                    return Ok(Exit::Paused);
                }
                pc += 1;
                match op {
                    Op::LoadConst { dst, k } => {
                        store(&mut reg!(dst), vm.consts[k as usize].clone())
                    }
                    Op::Move { dst, src } => {
                        let v = reg!(src).clone();
                        store(&mut reg!(dst), v);
                    }
                    Op::LoadLocal { dst, slot, global } => {
                        let v = match &reg!(slot) {
                            Value::Unset => tri!(self.load_global(global)),
                            v => v.clone(),
                        };
                        reg!(dst) = v;
                    }
                    Op::LoadGlobal { dst, global } => {
                        let v = match &self.ctx.globals[global as usize] {
                            Value::Unset => tri!(self.load_global(global)),
                            v => v.clone(),
                        };
                        reg!(dst) = v;
                    }
                    Op::StoreGlobal { src, global } => {
                        self.ctx.globals[global as usize] = reg!(src).clone();
                    }
                    Op::Bin { op, dst, a, b } => {
                        if let (&Value::Int(x), &Value::Int(y)) = (&reg!(a), &reg!(b)) {
                            if op.is_comparison() {
                                store(&mut reg!(dst), Value::Bool(ops::int_cmp(op, x, y)));
                                continue;
                            }
                            if let Some(r) = ops::int_arith(op, x, y) {
                                set_int!(dst, r);
                                continue;
                            }
                        }
                        if op == BinOp::Add
                            && let Value::Str(_) = &reg!(a)
                        {
                            // `s = s + t`, or a string under construction in a temporary
                            // (consumed here): append in place instead of copying.
                            let consumed = dst == a || a >= func.n_slots;
                            if consumed {
                                let rhs = reg!(b).clone();
                                let mut s = std::mem::take(&mut reg!(a));
                                if let Value::Str(text) = &mut s {
                                    append_display(text, &rhs);
                                }
                                reg!(dst) = s;
                                continue;
                            }
                        }
                        let v = tri!(ops::binary(op, &reg!(a), &reg!(b)));
                        reg!(dst) = v;
                    }
                    Op::BinK { op, dst, a, k } => {
                        let rhs = &vm.consts[k as usize];
                        if let (&Value::Int(x), &Value::Int(y)) = (&reg!(a), rhs) {
                            if op.is_comparison() {
                                store(&mut reg!(dst), Value::Bool(ops::int_cmp(op, x, y)));
                                continue;
                            }
                            if let Some(r) = ops::int_arith(op, x, y) {
                                set_int!(dst, r);
                                continue;
                            }
                        }
                        if op == BinOp::Add
                            && (dst == a || a >= func.n_slots)
                            && let Value::Str(_) = &reg!(a)
                        {
                            let mut s = std::mem::take(&mut reg!(a));
                            if let Value::Str(text) = &mut s {
                                append_display(text, rhs);
                            }
                            reg!(dst) = s;
                            continue;
                        }
                        let v = tri!(ops::binary(op, &reg!(a), rhs));
                        reg!(dst) = v;
                    }
                    Op::BinI { op, dst, a, imm } => {
                        if let Value::Int(x) = reg!(a) {
                            let y = i64::from(imm);
                            if op.is_comparison() {
                                store(&mut reg!(dst), Value::Bool(ops::int_cmp(op, x, y)));
                                continue;
                            }
                            if let Some(r) = ops::int_arith(op, x, y) {
                                set_int!(dst, r);
                                continue;
                            }
                        }
                        let rhs = Value::Int(i64::from(imm));
                        if op == BinOp::Add
                            && (dst == a || a >= func.n_slots)
                            && let Value::Str(_) = &reg!(a)
                        {
                            let mut s = std::mem::take(&mut reg!(a));
                            if let Value::Str(text) = &mut s {
                                append_display(text, &rhs);
                            }
                            reg!(dst) = s;
                            continue;
                        }
                        let v = tri!(ops::binary(op, &reg!(a), &rhs));
                        reg!(dst) = v;
                    }
                    Op::Neg { dst, src } => {
                        let v = match &reg!(src) {
                            Value::Int(x) => Value::Int(x.wrapping_neg()),
                            Value::Float(x) => Value::Float(-x),
                            other => tri!(Err(VmError::type_error(format!(
                                "cannot negate {}",
                                other.type_name()
                            )))),
                        };
                        reg!(dst) = v;
                    }
                    Op::Not { dst, src } => {
                        let v = !reg!(src).is_truthy();
                        reg!(dst) = Value::Bool(v);
                    }
                    Op::And { dst, a, b } => {
                        let v = reg!(a).is_truthy() && reg!(b).is_truthy();
                        reg!(dst) = Value::Bool(v);
                    }
                    Op::Or { dst, a, b } => {
                        let v = reg!(a).is_truthy() || reg!(b).is_truthy();
                        reg!(dst) = Value::Bool(v);
                    }
                    Op::Jump { target } => jump!(target),
                    Op::JumpIf { cond, when, target } => {
                        let truthy = match &reg!(cond) {
                            Value::Bool(b) => *b,
                            other => other.is_truthy(),
                        };
                        if truthy == when {
                            jump!(target);
                        }
                    }
                    Op::CmpJump {
                        op,
                        when,
                        a,
                        b,
                        target,
                    } => {
                        let r = match (&reg!(a), &reg!(b)) {
                            (&Value::Int(x), &Value::Int(y)) => ops::int_cmp(op, x, y),
                            (x, y) => tri!(ops::truth(op, x, y)),
                        };
                        if r == when {
                            jump!(target);
                        }
                    }
                    Op::CmpJumpK {
                        op,
                        when,
                        a,
                        target,
                        k,
                    } => {
                        let r = match (&reg!(a), &vm.consts[k as usize]) {
                            (&Value::Int(x), &Value::Int(y)) => ops::int_cmp(op, x, y),
                            (x, y) => tri!(ops::truth(op, x, y)),
                        };
                        if r == when {
                            jump!(target);
                        }
                    }
                    Op::CmpJumpI {
                        op,
                        when,
                        a,
                        target,
                        imm,
                    } => {
                        let r = match &reg!(a) {
                            &Value::Int(x) => ops::int_cmp(op, x, i64::from(imm)),
                            x => tri!(ops::truth(op, x, &Value::Int(i64::from(imm)))),
                        };
                        if r == when {
                            jump!(target);
                        }
                    }
                    Op::Return { src } => {
                        // The frame ends here: move the value out instead of cloning it,
                        // so the dead register does not keep it alive either.
                        let v = std::mem::replace(&mut reg!(src), Value::Nil);
                        ret!(v)
                    }
                    Op::ReturnNil => ret!(Value::Nil),
                    Op::Call { base: cb, argc } => {
                        let at = base + cb as usize;
                        // A function value or a closure (its name constant): straight into
                        // its frame when the arity fits.
                        let fid = match &self.stack[at + argc as usize] {
                            Value::Func(f) => Some(f.id),
                            Value::Str(name) => vm.callable_consts.get(&name.addr()).copied(),
                            _ => None,
                        };
                        if let Some(fid) = fid {
                            let callee = program.function(fid);
                            if callee.n_params == argc && callee.self_slot.is_none() {
                                enter_inline!(fid, callee, at, argc as usize);
                            }
                        }
                        let callee = self.stack[at + argc as usize].clone();
                        save_pc!();
                        let called = tri!(self.call_value(callee, at, argc as usize));
                        finish_call!(called, at);
                    }
                    Op::CallGlobal {
                        base: cb,
                        argc,
                        global,
                    } => {
                        let at = base + cb as usize;
                        // Fast path: a user function with the right arity and no `self`.
                        if let Value::Func(f) = self.ctx.globals[global as usize] {
                            let callee = program.function(f.id);
                            if callee.n_params == argc && callee.self_slot.is_none() {
                                enter_inline!(f.id, callee, at, argc as usize);
                            }
                        }
                        let callee = match &self.ctx.globals[global as usize] {
                            Value::Unset => tri!(self.load_global(global)),
                            v => v.clone(),
                        };
                        save_pc!();
                        let called = tri!(self.call_value(callee, at, argc as usize));
                        finish_call!(called, at);
                    }
                    Op::CallMethod {
                        base: cb,
                        argc,
                        name,
                    } => {
                        let at = base + cb as usize;
                        // `map.get(k).unwrap()` on a hashmap: no Option in between.
                        if argc == 1
                            && let (
                                Value::Ref(r),
                                Some(&Op::CallMethod {
                                    base: nb,
                                    argc: 0,
                                    name: next,
                                }),
                            ) = (&self.stack[at], code.get(pc))
                            && r.kind == crate::value::RefKind::Hashmap
                            && nb == cb
                            && vm.methods[name as usize] == Method::Get
                            && vm.methods[next as usize] == Method::Unwrap
                        {
                            let map = r.index;
                            match tri!(self.hashmap_get_now(map, at)) {
                                GetNow::Found(found) => {
                                    self.stack[at] = found;
                                    pc += 1;
                                    continue;
                                }
                                GetNow::Missing => {}
                                // A store that answers later: this `get` waits for it, then
                                // the `unwrap` runs as usual.
                                GetNow::Later(fut) => {
                                    save_pc!();
                                    finish_call!(Called::Suspend(fut), at);
                                }
                            }
                        }
                        // Hashmap get/has/set: answered by the store without the generic
                        // method machinery.
                        if let Value::Ref(r) = self.stack[at]
                            && r.kind == crate::value::RefKind::Hashmap
                        {
                            let method = vm.methods[name as usize];
                            if let Some(called) =
                                self.hashmap_fast(r.index, method, argc as usize, at)
                            {
                                save_pc!();
                                let called = tri!(called);
                                finish_call!(called, at);
                                continue;
                            }
                        }
                        // A user method on a struct that reads `self`: straight into its frame.
                        if let Value::Struct(obj) = &self.stack[at]
                            && let Some(fid) = vm.user_method(obj.ty.key, name)
                        {
                            let callee = program.function(fid);
                            if callee.n_params == argc && callee.self_slot.is_some() {
                                enter_inline!(fid, callee, at, argc as usize);
                            }
                        }
                        save_pc!();
                        let called = tri!(self.call_method(at, argc as usize, name, None));
                        finish_call!(called, at);
                    }
                    Op::CallSite { base: cb, site } => {
                        let at = base + cb as usize;
                        save_pc!();
                        let called = tri!(self.call_site(at, site));
                        finish_call!(called, at);
                    }
                    Op::Emit { chan, payload } => {
                        tri!(self.emit_op(base + chan as usize, base + payload as usize))
                    }
                    Op::EmitAwait { chan, payload } => {
                        let channel = reg!(chan).to_display();
                        let payload = reg!(payload).clone();
                        self.ctx.stats.emits += 1;
                        let fut = self.ctx.host.emit.emit_await(&channel, payload);
                        save_pc!();
                        self.resume_dst = base + chan as usize;
                        return Ok(Exit::Suspend(Box::pin(async move {
                            fut.await.map_err(VmError::from)
                        })));
                    }
                    Op::TryBegin { chain, err } => {
                        self.handlers.push(Handler {
                            chain,
                            frame: fi as u32,
                            err: (base + err as usize) as u32,
                        });
                    }
                    Op::TryEnd => {
                        if self.handlers.last().is_some_and(|h| h.frame as usize == fi) {
                            self.handlers.pop();
                        }
                    }
                    Op::Catch { end } => {
                        // Reached by falling through: the previous clause is done.
                        pc = end as usize;
                    }
                    Op::Throw { src } => {
                        let v = reg!(src).clone();
                        self.frames[fi].pc = (pc - 1) as u32;
                        if self.has_any_handler() {
                            self.unwind(v, None)?;
                            // The target may be a native frame waiting for the error.
                            return Ok(Exit::Resume);
                        }
                        // No handler anywhere: `throw e` is `return Err(e)`.
                        let v = match v {
                            Value::Err(_) => v,
                            other => Value::err(other),
                        };
                        ret!(v)
                    }
                    Op::Propagate { reg } => {
                        let payload = match &reg!(reg) {
                            Value::Ok(inner) | Value::Some(inner) => {
                                let inner = (**inner).clone();
                                reg!(reg) = inner;
                                continue;
                            }
                            Value::Err(e) => (**e).clone(),
                            Value::None => Value::None,
                            _ => continue,
                        };
                        self.frames[fi].pc = (pc - 1) as u32;
                        if self.handlers.last().is_some_and(|h| h.frame as usize == fi) {
                            self.unwind(payload, None)?;
                            return Ok(Exit::Resume);
                        }
                        let v = reg!(reg).clone();
                        ret!(v)
                    }
                    Op::BuildArray { start, n } => self.build_array(base + start as usize, n),
                    Op::BuildMap { start, n } => self.build_map(base + start as usize, n),
                    Op::BuildStruct { start, shape } => {
                        self.build_struct(base + start as usize, shape)
                    }
                    Op::FieldGet { dst, obj, name } => {
                        let field = program.name(name);
                        let v = match &reg!(obj) {
                            Value::Struct(s) => match s.ty.field_index(field) {
                                Some(idx) => s.fields.lock()[idx].clone(),
                                None => tri!(Err(VmError::no_field(field, &s.ty.name))),
                            },
                            other => tri!(ops::field_get(other, field)),
                        };
                        reg!(dst) = v;
                    }
                    Op::FieldSet { obj, src, name } => {
                        tri!(self.field_set_op(base + obj as usize, base + src as usize, name))
                    }
                    Op::IndexGet { dst, coll, idx } => {
                        let v = match (&reg!(coll), &reg!(idx)) {
                            (Value::Array(arr), &Value::Int(i)) => {
                                let items = arr.0.lock();
                                match usize::try_from(i).ok().and_then(|i| items.get(i)) {
                                    Some(v) => v.clone(),
                                    None => {
                                        let len = items.len();
                                        drop(items);
                                        tri!(Err(VmError::index_out_of_bounds(i, len)))
                                    }
                                }
                            }
                            (c, i) => match crate::hashmaps::index(c, i, &mut self.ctx) {
                                Some(crate::hashmaps::Indexed::Now(r)) => tri!(r),
                                Some(crate::hashmaps::Indexed::Later(fut)) => {
                                    save_pc!();
                                    self.resume_dst = base + dst as usize;
                                    return Ok(Exit::Suspend(fut));
                                }
                                None => tri!(ops::index_get(c, i)),
                            },
                        };
                        reg!(dst) = v;
                    }
                    Op::IndexSet { coll, idx, src } => tri!(self.index_set_op(
                        base + coll as usize,
                        base + idx as usize,
                        base + src as usize
                    )),
                    Op::Cast { reg, target } => tri!(self.cast_op(base + reg as usize, target)),
                    Op::CheckType { reg, name } => self.check_type_op(base + reg as usize, name),
                    Op::Await { reg, timeout_ms } => {
                        if matches!(reg!(reg), Value::Object(_) | Value::Array(_))
                            && let Some(fut) = crate::task::await_value(
                                &reg!(reg),
                                millis(timeout_ms),
                                &self.ctx.host.system,
                            )
                        {
                            save_pc!();
                            self.resume_dst = base + reg as usize;
                            return Ok(Exit::Suspend(fut));
                        }
                    }
                    Op::AwaitAll {
                        start,
                        n,
                        timeout_ms,
                        any,
                    } => {
                        let from = base + start as usize;
                        let items: Vec<Value> = self.stack[from..from + n as usize]
                            .iter_mut()
                            .map(std::mem::take)
                            .collect();
                        let mode = if any {
                            crate::task::Mode::Any
                        } else {
                            crate::task::Mode::All
                        };
                        match crate::task::await_many(
                            items,
                            mode,
                            millis(timeout_ms),
                            &self.ctx.host.system,
                        ) {
                            Ok(v) => reg!(start) = v,
                            Err(fut) => {
                                save_pc!();
                                self.resume_dst = from;
                                return Ok(Exit::Suspend(fut));
                            }
                        }
                    }
                    Op::SpawnAsync { reg } => {
                        let at = base + reg as usize;
                        tri!(self.spawn_op(at));
                    }
                }
            }
        }
    }

    // Cold ops, kept out of the dispatch loop so its hot state stays in registers.

    /// `SPAWN_ASYNC`: the function in `at` becomes a task running in a child execution.
    #[inline(never)]
    fn spawn_op(&mut self, at: usize) -> Result<(), VmError> {
        let callee = std::mem::take(&mut self.stack[at]);
        let program = self.ctx.vm.program.clone();
        let func = match &callee {
            Value::Func(f) if (f.id as usize) < program.functions.len() => f.id,
            Value::Str(name) => program.function_id(name).ok_or_else(|| {
                VmError::new(
                    ErrorKind::Name,
                    format!("SPAWN_ASYNC: no function named '{name}'"),
                )
            })?,
            other => {
                return Err(VmError::type_error(format!(
                    "SPAWN_ASYNC expects a function, got {}",
                    other.type_name()
                )));
            }
        };
        let label = program.function(func).name.to_string();
        let mut config = self.ctx.config.clone();
        // The task shares the execution's deadline.
        let now = self.ctx.host.system.monotonic();
        config.timeout = self.deadline.map(|d| d.saturating_duration_since(now));
        let mut child = Execution::new(self.ctx.vm.clone(), self.ctx.host.clone(), config);
        child.ctx.globals = self.ctx.globals.clone();
        child.ctx.child_stats = self.ctx.child_stats.clone();
        child.ctx.mocks = self.ctx.mocks.clone();
        child.ctx.captured = self.ctx.captured.clone();
        self.stack[at] = crate::task::spawn(
            child,
            func,
            label,
            &self.ctx.host.system,
            self.ctx.child_stats.clone(),
        );
        Ok(())
    }

    #[inline(never)]
    fn build_array(&mut self, from: usize, n: u32) {
        let items: Vec<Value> = self.stack[from..from + n as usize]
            .iter_mut()
            .map(std::mem::take)
            .collect();
        self.stack[from] = Value::array(items);
    }

    #[inline(never)]
    fn build_map(&mut self, from: usize, n: u32) {
        let mut map =
            crate::value::MapInner::with_capacity_and_hasher(n as usize, Default::default());
        for pair in self.stack[from..from + 2 * n as usize].chunks_exact_mut(2) {
            let key = match std::mem::take(&mut pair[0]) {
                Value::Str(s) => s,
                other => Str::from(other.to_display()),
            };
            map.insert(key, std::mem::take(&mut pair[1]));
        }
        self.stack[from] = Value::Map(crate::value::Map::new(map));
    }

    #[inline(never)]
    fn build_struct(&mut self, from: usize, shape: u32) {
        let vm = self.ctx.vm.clone();
        let program = &vm.program;
        let layout = &vm.shapes[shape as usize];
        let n = program.shapes[shape as usize].fields.len();
        let literal = self.stack[from..from + n].iter_mut().map(std::mem::take);
        let values: Vec<Value> = match &layout.order {
            None => literal.collect(),
            Some(order) => {
                let mut fields = vec![Value::Nil; layout.ty.fields.len()];
                for (v, &pos) in literal.zip(order) {
                    fields[pos as usize] = v;
                }
                fields
            }
        };
        let value = match layout.kind {
            ShapeKind::Struct => Value::Struct(StructObj::new(layout.ty.clone(), values)),
            ShapeKind::EnumVariant { ty, variant } => {
                let decl = &program.types[ty as usize];
                let variant_name = match &decl.kind {
                    concerto_ir::TypeDefKind::Enum { variants } => {
                        variants[variant as usize].name.clone()
                    }
                    _ => layout.ty.name.clone(),
                };
                Value::Enum(Arc::new(EnumObj {
                    type_name: decl.name.clone(),
                    variant: variant_name,
                    type_id: ty,
                    variant_id: variant,
                    field_names: Some(layout.ty.fields.clone()),
                    payload: values,
                }))
            }
        };
        self.stack[from] = value;
    }

    #[inline(never)]
    fn emit_op(&mut self, chan: usize, payload: usize) -> Result<(), VmError> {
        let channel = match &self.stack[chan] {
            Value::Str(s) => s.clone(),
            other => Str::from(other.to_display()),
        };
        self.ctx.emit(&channel, &self.stack[payload])
    }

    #[inline(never)]
    fn field_set_op(
        &mut self,
        obj: usize,
        src: usize,
        name: concerto_ir::NameId,
    ) -> Result<(), VmError> {
        let v = self.stack[src].clone();
        let field = self.ctx.vm.program.name(name).clone();
        ops::field_set(&self.stack[obj], &field, v)
    }

    #[inline(never)]
    fn index_set_op(&mut self, coll: usize, idx: usize, src: usize) -> Result<(), VmError> {
        let v = self.stack[src].clone();
        let i = self.stack[idx].clone();
        ops::index_set(&self.stack[coll], i, v)
    }

    #[inline(never)]
    fn cast_op(&mut self, reg: usize, target: CastTarget) -> Result<(), VmError> {
        let v = std::mem::take(&mut self.stack[reg]);
        self.stack[reg] = cast(v, target)?;
        Ok(())
    }

    #[inline(never)]
    fn check_type_op(&mut self, reg: usize, name: concerto_ir::NameId) {
        let r = ops::check_type(&self.stack[reg], self.ctx.vm.program.name(name));
        self.stack[reg] = Value::Bool(r);
    }

    /// Resolves a global that is unset in the table (constants not initialised, fallbacks,
    /// undefined names).
    #[cold]
    fn load_global(&self, id: u32) -> Result<Value, VmError> {
        let value = &self.ctx.globals[id as usize];
        if !matches!(value, Value::Unset) {
            return Ok(value.clone());
        }
        let global = &self.ctx.vm.program.globals[id as usize];
        match &global.kind {
            GlobalKind::Constant {
                fallback: Some(fid),
            } => Ok(Value::Func(crate::value::FuncRef {
                program: self.ctx.vm.registry_id,
                id: *fid,
            })),
            _ => Err(VmError::undefined(&global.name)),
        }
    }

    /// `CALL_METHOD`: the receiver in `base`, the arguments after it; the result goes to
    /// `base`.
    fn call_method(
        &mut self,
        base: usize,
        argc: usize,
        name: concerto_ir::NameId,
        schema: Option<u32>,
    ) -> Result<Called, VmError> {
        // Hashmap get/has/set answered at once by the store: no intermediate values.
        if let Value::Ref(r) = self.stack[base]
            && r.kind == crate::value::RefKind::Hashmap
        {
            let method = self.ctx.vm.methods[name as usize];
            if let Some(called) = self.hashmap_fast(r.index, method, argc, base) {
                return called;
            }
        }
        // The common Option/Result queries, without the generic method machinery.
        if argc == 0 {
            let method = self.ctx.vm.methods[name as usize];
            let quick = match (&self.stack[base], method) {
                (Value::Some(p) | Value::Ok(p), Method::Unwrap) => Some((**p).clone()),
                (Value::Some(_), Method::IsSome) | (Value::Ok(_), Method::IsOk) => {
                    Some(Value::Bool(true))
                }
                (Value::None, Method::IsSome) | (Value::Err(_), Method::IsOk) => {
                    Some(Value::Bool(false))
                }
                (Value::None, Method::IsNone) | (Value::Err(_), Method::IsErr) => {
                    Some(Value::Bool(true))
                }
                (Value::Some(_), Method::IsNone) | (Value::Ok(_), Method::IsErr) => {
                    Some(Value::Bool(false))
                }
                _ => None,
            };
            if let Some(v) = quick {
                self.stack[base] = v;
                return Ok(Called::Done);
            }
        }
        // User methods on structs, enums and tools.
        let user = {
            let vm = &self.ctx.vm;
            match &self.stack[base] {
                Value::Struct(s) if s.ty.key != u32::MAX => vm.user_method(s.ty.key, name),
                Value::Struct(s) => {
                    let key = vm.type_key(&s.ty.name);
                    vm.user_method(key, name)
                }
                Value::Enum(e) => vm.user_method(e.type_id, name),
                Value::Ref(r) if r.kind == crate::value::RefKind::Tool => {
                    let tool = &vm.program.tools[r.index as usize];
                    let method = vm.program.name(name).clone();
                    match tool.methods.iter().find(|(m, _)| *m == method) {
                        Some((_, fid)) => {
                            // The program's own tools run unless the host switched them off
                            // (wholly, or this method).
                            self.ctx
                                .host
                                .tools
                                .check(&vm.program, &tool.decl.name, &method)
                                .map_err(VmError::from)?;
                            Some(*fid)
                        }
                        None => {
                            let tool_name = tool.decl.name.clone();
                            return Err(VmError::type_error(format!(
                                "tool `{tool_name}` has no method '{method}'"
                            )));
                        }
                    }
                }
                _ => None,
            }
        };
        if let Some(fid) = user {
            if let Value::Ref(r) = self.stack[base] {
                // A tool method's `self` is the tool instance.
                if r.kind == crate::value::RefKind::Tool {
                    self.stack[base] = self.ctx.vm.tool_instances[r.index as usize].clone();
                }
            }
            self.enter(fid, base, argc, true)?;
            return Ok(Called::Entered);
        }
        let vm = self.ctx.vm.clone();
        let method = vm.methods[name as usize];
        let method_name = vm.program.name(name);
        let flow = methods::call_builtin_method(
            &mut self.ctx,
            method,
            method_name,
            schema,
            &self.stack[base..base + argc + 1],
        );
        self.flow(flow?, base)
    }

    /// `map.get(k)` when the store answers at once and finds the key: the value. `None`
    /// otherwise (the plain path then runs and reports a missing key).
    #[inline]
    fn hashmap_get_now(&mut self, map: u32, base: usize) -> Result<GetNow, VmError> {
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
    fn hashmap_fast(
        &mut self,
        map: u32,
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

    fn call_site(&mut self, base: usize, idx: u32) -> Result<Called, VmError> {
        let vm = self.ctx.vm.clone();
        match &vm.program.call_sites[idx as usize] {
            concerto_ir::CallSite::MethodWithSchema { name, argc, schema } => {
                self.call_method(base, *argc as usize, *name, Some(*schema))
            }
            concerto_ir::CallSite::Native { name, argc } => {
                let argc = *argc as usize;
                let native = vm.program.name(*name);
                match builtins::lookup(native) {
                    Some(callee) => self.call_value(callee, base, argc),
                    None => Err(VmError::call_error(format!(
                        "unknown native function '{native}'"
                    ))),
                }
            }
            concerto_ir::CallSite::Agent {
                agent,
                method,
                argc,
                schema,
                ..
            } => {
                let argc = *argc as usize;
                let mut args = Vec::with_capacity(argc + 1);
                args.push(Value::Ref(crate::value::RefValue {
                    kind: crate::value::RefKind::Agent,
                    program: vm.registry_id,
                    index: *agent,
                }));
                args.extend(self.stack[base..base + argc].iter().cloned());
                let method_name = vm.program.name(*method);
                let flow = methods::call_builtin_method(
                    &mut self.ctx,
                    Method::from_name(method_name),
                    method_name,
                    *schema,
                    &args,
                );
                self.flow(flow?, base)
            }
            concerto_ir::CallSite::Tool {
                tool,
                function,
                argc,
            } => {
                // The tool instance becomes `self`: shift the arguments up by one.
                let argc = *argc as usize;
                self.ensure(base + argc + 1);
                for i in (0..argc).rev() {
                    self.stack.swap(base + i, base + i + 1);
                }
                self.stack[base] = vm.tool_instances[*tool as usize].clone();
                self.enter(*function, base, argc, true)?;
                Ok(Called::Entered)
            }
            concerto_ir::CallSite::NilCoalescePrep => {
                self.stack[base] = match std::mem::take(&mut self.stack[base]) {
                    Value::None => Value::Nil,
                    Value::Some(inner) => (*inner).clone(),
                    other => other,
                };
                Ok(Called::Done)
            }
            concerto_ir::CallSite::BuildRange => {
                let range = ops::build_range(
                    &self.stack[base],
                    &self.stack[base + 1],
                    &self.stack[base + 2],
                )?;
                self.stack[base] = Value::Range(Arc::new(range));
                Ok(Called::Done)
            }
            concerto_ir::CallSite::Listen { listen, argc } => {
                let args = self.stack[base..base + *argc as usize].to_vec();
                let flow = crate::listen::begin(&mut self.ctx, *listen, &args)?;
                self.flow(flow, base)
            }
            concerto_ir::CallSite::MockModel { mock } => {
                let def = &vm.program.mocks[*mock as usize];
                self.ctx.mocks.lock().insert(def.agent, def.reply.clone());
                Ok(Called::Done)
            }
            concerto_ir::CallSite::Hashmap { op, hashmap } => {
                let n = match op {
                    concerto_ir::HashmapOp::Set => 2,
                    _ => 1,
                };
                let flow = methods::hashmap_opcode(
                    &mut self.ctx,
                    *op,
                    *hashmap,
                    &self.stack[base..base + n],
                )?;
                self.flow(flow, base)
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
fn main_outcome(program: &Program, result: Value) -> Result<Value, VmError> {
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

/// Stores `v` into a register. The old value is dropped only when it owns something;
/// plain scalars are simply overwritten (no out-of-line drop call on the hot path).
#[inline(always)]
fn store(slot: &mut Value, v: Value) {
    let old = std::mem::replace(slot, v);
    match old {
        Value::Nil
        | Value::Bool(_)
        | Value::Int(_)
        | Value::Float(_)
        | Value::None
        | Value::Func(_)
        | Value::Builtin(_)
        | Value::Ref(_)
        | Value::Unset => std::mem::forget(old),
        owned => drop(owned),
    }
}

/// Appends the display form of `rhs` to `s`, in place when `s` is not shared.
#[inline]
fn append_display(s: &mut Str, rhs: &Value) {
    match rhs {
        Value::Str(t) => s.push_str(t),
        Value::Int(i) => s.push_str(itoa::Buffer::new().format(*i)),
        other => s.push_str(&other.to_display()),
    }
}

/// `CAST` semantics. A value that cannot become the target (a string that is not a number,
/// an array as `Int`, …) is a catchable type error naming the value's type and the target.
fn cast(v: Value, target: CastTarget) -> Result<Value, VmError> {
    let fail = |v: &Value, to: &str| {
        let shown = match v {
            Value::Str(s) => format!("String \"{s}\""),
            other => other.type_name().to_string(),
        };
        Err(VmError::type_error(format_args!(
            "cannot cast {shown} to {to}"
        )))
    };
    match target {
        CastTarget::Int => match v {
            Value::Int(_) => Ok(v),
            Value::Float(f) => Ok(Value::Int(f as i64)),
            Value::Bool(b) => Ok(Value::Int(b as i64)),
            Value::Str(ref s) => match s.trim().parse::<i64>() {
                Ok(i) => Ok(Value::Int(i)),
                Err(_) => fail(&v, "Int"),
            },
            ref other => fail(other, "Int"),
        },
        CastTarget::Float => match v {
            Value::Float(_) => Ok(v),
            Value::Int(i) => Ok(Value::Float(i as f64)),
            Value::Bool(b) => Ok(Value::Float(if b { 1.0 } else { 0.0 })),
            Value::Str(ref s) => match s.trim().parse::<f64>() {
                Ok(f) => Ok(Value::Float(f)),
                Err(_) => fail(&v, "Float"),
            },
            ref other => fail(other, "Float"),
        },
        CastTarget::String => Ok(match v {
            Value::Str(_) => v,
            other => Value::str(other.to_display()),
        }),
        CastTarget::Bool => Ok(Value::Bool(v.is_truthy())),
        CastTarget::Other => Ok(v),
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
