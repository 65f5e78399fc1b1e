//! [`Execution`]: one run of a program — value stack, call frames, handlers, globals — and
//! the dispatch loop.
//!
//! The loop is synchronous and allocation-free for ordinary instructions. When an
//! instruction needs the outside world (an agent call, a slow store, emit-await, a sleep) it
//! returns [`Exit::Suspend`] with a future; the async driver ([`Execution::call`]) awaits it
//! without blocking a thread and resumes the loop with the result.
//!
//! Frames share one value stack: a frame's local slots are `stack[base..base + n_slots]`,
//! its operands sit above them. Arguments are pushed by the caller exactly where the
//! callee's parameter slots go, so a call moves no values.

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
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            max_call_depth: 1000,
            timeout: None,
            max_collection_len: 1 << 30,
        }
    }
}

/// Counters an execution keeps.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecStats {
    /// Emits delivered.
    pub emits: u64,
    /// Errors caught by `try`/`catch` (or by a pipeline stage).
    pub errors_caught: u64,
    /// Instructions-ish: backward jumps and calls executed (the fuel counter).
    pub ticks: u64,
}

/// What a resumed native step wants next.
pub(crate) enum Step {
    /// Call `callee(args)` and resume with its result.
    Call(Value, Vec<Value>),
    /// Finish, handing `value` to the frame below.
    Return(Value),
    /// Wait for a future and resume with its result.
    Suspend(BoxFuture<Result<Value, VmError>>),
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

/// Execution state a built-in may use.
pub(crate) struct Ctx {
    pub(crate) vm: Arc<Vm>,
    pub(crate) globals: Vec<Value>,
    pub(crate) host: Host,
    pub(crate) config: ExecConfig,
    pub(crate) stats: ExecStats,
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
    height: u32,
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
}

/// How many backward jumps and calls run between deadline checks and cooperative yields.
const FUEL: u32 = 1 << 16;

/// One execution of a program.
pub struct Execution {
    stack: Vec<Value>,
    frames: Vec<Frame>,
    natives: Vec<Option<Box<dyn Continuation>>>,
    handlers: Vec<Handler>,
    pending: Option<Result<Value, VmError>>,
    fuel: u32,
    deadline: Option<Instant>,
    pub(crate) ctx: Ctx,
}

/// Outcome of dispatching a call.
enum Called {
    /// A code frame was pushed; the loop continues in it.
    Entered,
    /// The result is already pushed (values are not passed back through return slots: a
    /// 16-byte enum returned in memory costs a store-forwarding stall).
    Pushed,
    /// The callee must wait.
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
        Execution {
            deadline,
            stack: Vec::with_capacity(256),
            frames: Vec::with_capacity(64),
            natives: Vec::new(),
            handlers: Vec::new(),
            pending: None,
            fuel: FUEL,
            ctx: Ctx {
                vm,
                globals,
                host,
                config,
                stats: ExecStats::default(),
                rng,
            },
        }
    }

    /// The program.
    pub fn program(&self) -> &Arc<Program> {
        &self.ctx.vm.program
    }

    /// Counters so far.
    pub fn stats(&self) -> ExecStats {
        self.ctx.stats
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
        let result = self.call(program.entry, Vec::new()).await?;
        match result {
            Value::Err(e) => {
                let mut err = VmError::unhandled((*e).clone());
                let entry = program.function(program.entry);
                err.locate(
                    Location {
                        function: entry.name.clone(),
                        span: Default::default(),
                    },
                    Vec::new(),
                );
                Err(err)
            }
            other => Ok(other),
        }
    }

    /// Calls function `func` with `args` and drives it to completion, awaiting whatever it
    /// waits for.
    ///
    /// # Errors
    /// The uncaught runtime error.
    pub async fn call(&mut self, func: FuncId, args: Vec<Value>) -> Result<Value, VmError> {
        self.reset();
        let argc = args.len();
        self.stack.extend(args);
        match self.enter(func, argc, false) {
            Ok(()) => {}
            Err(err) => return Err(err),
        }
        loop {
            match self.run() {
                Ok(Exit::Done(value)) => return Ok(value),
                Ok(Exit::Suspend(fut)) => {
                    let result = fut.await;
                    self.pending = Some(result);
                }
                Ok(Exit::Resume) => {}
                Ok(Exit::Yield) => {
                    if let Some(deadline) = self.deadline {
                        if self.ctx.now() >= deadline {
                            let limit = self.ctx.config.timeout.unwrap_or_default();
                            let err = VmError::new(
                                ErrorKind::ExecutionTimeout,
                                format!("execution timed out after {:.3} s", limit.as_secs_f64()),
                            );
                            return Err(self.finish_error(err));
                        }
                    }
                    YieldNow(false).await;
                }
                Err(err) => {
                    let err = self.finish_error(err);
                    self.reset();
                    return Err(err);
                }
            }
        }
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
            // Below the top, `pc` is the return address: the call is the one before it.
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

    /// Pushes a code frame for `func`; its `argc` arguments are the top of the stack.
    /// Pushes a code frame for `func`. Its `argc` arguments are the top of the stack; with
    /// `recv_on_stack` the method receiver sits just below them and becomes `self`.
    #[inline]
    fn enter(&mut self, func: FuncId, argc: usize, recv_on_stack: bool) -> Result<(), VmError> {
        let vm = &self.ctx.vm;
        let f = vm.program.function(func);
        if argc != f.n_params as usize || self.frames.len() >= self.ctx.config.max_call_depth {
            return Err(self.enter_error(func, argc, recv_on_stack));
        }
        let len = self.stack.len();
        // `self` is slot 0 when the body uses it; the receiver is already there for a
        // method call, otherwise the slot starts unset.
        let base = match (recv_on_stack, f.self_slot.is_some()) {
            (true, true) => len - argc - 1,
            (false, false) => len - argc,
            (true, false) => {
                self.stack.remove(len - argc - 1);
                len - argc - 1
            }
            (false, true) => {
                self.stack.insert(len - argc, Value::Unset);
                len - argc
            }
        };
        for _ in self.stack.len() - base..f.n_slots as usize {
            self.stack.push(Value::Unset);
        }
        self.frames.push(Frame { func, pc: 0, base: base as u32, native: NO_NATIVE });
        Ok(())
    }

    #[cold]
    fn enter_error(&mut self, func: FuncId, argc: usize, recv_on_stack: bool) -> VmError {
        let f = self.ctx.vm.program.function(func);
        if argc != f.n_params as usize {
            let drop = argc + usize::from(recv_on_stack);
            self.stack.truncate(self.stack.len().saturating_sub(drop));
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
        VmError::new(
            ErrorKind::CallDepth,
            format!("max call depth exceeded ({})", self.ctx.config.max_call_depth),
        )
    }

    /// Dispatches a call of `callee` whose `argc` arguments are the top of the stack.
    fn call_value(&mut self, callee: Value, argc: usize) -> Result<Called, VmError> {
        match callee {
            Value::Func(f) => {
                self.enter(f.id, argc, false)?;
                Ok(Called::Entered)
            }
            Value::Builtin(id) => {
                let start = self.stack.len() - argc;
                let flow = if (id as usize) < builtins::BUILTIN_COUNT {
                    builtins::call(id, &mut self.ctx, &self.stack[start..])
                } else {
                    self.construct_variant(id as usize - builtins::BUILTIN_COUNT, start)
                };
                self.stack.truncate(start);
                self.flow(flow?)
            }
            Value::Str(name) => {
                let fid = self.ctx.vm.callable_names.get(name.as_str()).copied();
                match fid {
                    Some(fid) => {
                        self.enter(fid, argc, false)?;
                        Ok(Called::Entered)
                    }
                    None => {
                        self.drop_args(argc);
                        Err(VmError::type_error("cannot call value of type String"))
                    }
                }
            }
            Value::Ref(r) if r.kind == crate::value::RefKind::Agent => {
                // `Agent(prompt)` is `Agent.execute(prompt)`.
                let start = self.stack.len() - argc;
                let mut args = Vec::with_capacity(argc + 1);
                args.push(Value::Ref(r));
                args.extend(self.stack.drain(start..));
                let method = Method::Execute;
                let flow =
                    methods::call_builtin_method(&mut self.ctx, method, "execute", None, &args);
                self.flow(flow?)
            }
            Value::Path(path) => {
                self.drop_args(argc);
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
            other => {
                self.drop_args(argc);
                Err(VmError::type_error(format!(
                    "cannot call value of type {}",
                    other.type_name()
                )))
            }
        }
    }

    fn drop_args(&mut self, argc: usize) {
        let len = self.stack.len();
        self.stack.truncate(len - argc.min(len));
    }

    fn construct_variant(&mut self, ctor: usize, start: usize) -> Result<Flow, VmError> {
        let vm = &self.ctx.vm;
        let Some(c) = vm.enum_ctors.get(ctor) else {
            return Err(VmError::new(
                ErrorKind::Internal,
                "unknown enum constructor",
            ));
        };
        let ty = &vm.program.types[c.ty as usize];
        let concerto_ir::TypeDefKind::Enum { variants } = &ty.kind else {
            return Err(VmError::new(
                ErrorKind::Internal,
                "enum constructor of a non-enum",
            ));
        };
        let variant = &variants[c.variant as usize];
        let expected = variant.fields.as_ref().map_or(0, |f| f.len());
        let payload: Vec<Value> = self.stack[start..].to_vec();
        if payload.len() != expected {
            return Err(VmError::new(
                ErrorKind::Arity,
                format!(
                    "call error: `{}::{}` takes {expected} argument{}, got {}",
                    ty.name,
                    variant.name,
                    if expected == 1 { "" } else { "s" },
                    payload.len()
                ),
            ));
        }
        Ok(Flow::Value(Value::Enum(Arc::new(EnumObj {
            type_name: ty.name.clone(),
            variant: variant.name.clone(),
            type_id: c.ty,
            variant_id: c.variant,
            field_names: None,
            payload,
        }))))
    }

    /// Turns a built-in's flow into a call outcome.
    fn flow(&mut self, flow: Flow) -> Result<Called, VmError> {
        match flow {
            Flow::Value(v) => {
                self.stack.push(v);
                Ok(Called::Pushed)
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
                self.frames.push(Frame {
                    func: NATIVE_FUNC,
                    pc: 0,
                    base: self.stack.len() as u32,
                    native: idx,
                });
                self.pending = Some(Ok(Value::Nil));
                Ok(Called::Native)
            }
        }
    }

    /// Hands a result to the top frame: pushed for a code frame, resumed for a native one.
    /// Returns `Some(exit)` when the loop must stop.
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
                        self.stack.push(v);
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
                    self.pop_native_frame();
                    input = Ok(v);
                }
                Ok(Step::Suspend(fut)) => return Ok(Some(Exit::Suspend(fut))),
                Ok(Step::Call(callee, args)) => {
                    let argc = args.len();
                    self.stack.extend(args);
                    match self.call_value(callee, argc) {
                        Ok(Called::Entered) => return Ok(None),
                        Ok(Called::Pushed) => input = Ok(self.stack.pop().unwrap_or_default()),
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
            self.stack.truncate(frame.base as usize);
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

    /// Runs until the outermost frame returns, the program must wait, or fuel runs out.
    pub(crate) fn run(&mut self) -> Result<Exit, VmError> {
        loop {
            let step = match self.pending.take() {
                Some(input) => self.deliver(input),
                None => Ok(None),
            };
            let result = match step {
                Ok(Some(exit)) => Ok(exit),
                Ok(None) => self.dispatch(),
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
            self.stack.truncate(handler.height as usize);
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
                self.stack.push(value);
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
            let frame = self.frames.pop();
            if let Some(frame) = frame {
                self.stack.truncate(frame.base as usize);
                if frame.native != NO_NATIVE {
                    if frame.native as usize + 1 == self.natives.len() {
                        self.natives.pop();
                    } else if let Some(slot) = self.natives.get_mut(frame.native as usize) {
                        *slot = None;
                    }
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
    }

    /// Whether a `throw` here has a `try` to go to. Without one, `throw e` is
    /// `return Err(e)` (which a pipeline stage then reports as its failure).
    fn has_any_handler(&self) -> bool {
        !self.handlers.is_empty()
    }

    /// Returns `value` from the current code frame.
    fn do_return(&mut self, value: Value) -> Result<Option<Exit>, VmError> {
        let Some(frame) = self.frames.pop() else {
            return Ok(Some(Exit::Done(value)));
        };
        self.stack.truncate(frame.base as usize);
        let depth = self.frames.len() as u32;
        while self.handlers.last().is_some_and(|h| h.frame >= depth) {
            self.handlers.pop();
        }
        self.deliver(Ok(value))
    }

    /// The dispatch loop.
    fn dispatch(&mut self) -> Result<Exit, VmError> {
        let vm = self.ctx.vm.clone();
        let program: &Program = &vm.program;
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
            // Runs a fallible expression; on error records the faulting pc first.
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
            // Like `tri!`, for the component at `$at` of a superinstruction.
            macro_rules! tri_at {
                ($e:expr, $at:expr) => {
                    match $e {
                        Ok(v) => v,
                        Err(err) => {
                            self.frames[fi].pc = ($at) as u32;
                            return Err(err);
                        }
                    }
                };
            }
            // A jump, spending fuel when it goes backwards (a loop).
            macro_rules! jump {
                ($target:expr) => {{
                    let target = $target as usize;
                    if target < pc {
                        self.fuel -= 1;
                        if self.fuel == 0 {
                            self.fuel = FUEL;
                            self.ctx.stats.ticks += FUEL as u64;
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
                    save_pc!();
                    // Fast path: no handler of this frame, a code frame below.
                    let plain = fi >= 1
                        && self.frames[fi - 1].native == NO_NATIVE
                        && self.handlers.last().is_none_or(|h| (h.frame as usize) < fi);
                    if plain {
                        self.stack.truncate(base);
                        self.frames.pop();
                        self.stack.push(v);
                        fi -= 1;
                        let caller = self.frames[fi];
                        func = program.function(caller.func);
                        code = &func.code;
                        base = caller.base as usize;
                        pc = caller.pc as usize;
                        continue;
                    }
                    match self.do_return(v)? {
                        Some(exit) => return Ok(exit),
                        None => continue 'frames,
                    }
                }};
            }
            // The integer fast path of a fused op: pushes the result and moves on.
            macro_rules! int_fast {
                ($op:expr, $x:expr, $y:expr, $next:expr) => {
                    if $op.is_comparison() {
                        self.stack.push(Value::Bool(ops::int_cmp($op, $x, $y)));
                        pc = $next;
                        continue;
                    } else if let Some(r) = ops::int_arith($op, $x, $y) {
                        self.stack.push(Value::Int(r));
                        pc = $next;
                        continue;
                    }
                };
            }
            macro_rules! pop {
                () => {
                    self.stack.pop().unwrap_or(Value::Nil)
                };
            }
            macro_rules! top {
                () => {
                    match self.stack.last_mut() {
                        Some(v) => v,
                        None => tri!(Err(VmError::new(ErrorKind::Internal, "stack underflow"))),
                    }
                };
            }
            // After a call: go on inline, switch to the new frame, or leave the loop.
            macro_rules! finish_call {
                ($called:expr) => {
                    match self.after_call($called) {
                        Some(exit) => return Ok(exit),
                        None if self.frames.len() == fi + 1 => {}
                        None => continue 'frames,
                    }
                };
            }
            // Int division and remainder: the fast path needs a non-zero divisor.
            macro_rules! divide {
                ($int:ident, $slow:path) => {{
                    let b = pop!();
                    let a = top!();
                    match (&*a, &b) {
                        (Value::Int(x), Value::Int(y)) if *y != 0 => *a = Value::Int(x.$int(*y)),
                        _ => {
                            let lhs = std::mem::take(a);
                            *a = tri!($slow(lhs, b));
                        }
                    }
                }};
            }
            macro_rules! binary {
                ($fast:expr, $slow:path) => {{
                    let b = pop!();
                    let a = top!();
                    match (&*a, &b) {
                        (Value::Int(x), Value::Int(y)) => *a = $fast(*x, *y),
                        _ => {
                            let lhs = std::mem::take(a);
                            *a = tri!($slow(lhs, b));
                        }
                    }
                }};
            }

            loop {
                let Some(&op) = code.get(pc) else {
                    // Running off the end returns nil.
                    save_pc!();
                    match self.do_return(Value::Nil)? {
                        Some(exit) => return Ok(exit),
                        None => continue 'frames,
                    }
                };
                pc += 1;
                match op {
                    Op::LoadConst(idx) | Op::Push(idx) => {
                        let v = vm.consts[idx as usize].clone();
                        self.stack.push(v);
                    }
                    Op::LoadLocal { slot, global } => {
                        let v = &self.stack[base + slot as usize];
                        if let Value::Unset = v {
                            let v = tri!(self.load_global(global));
                            self.stack.push(v);
                        } else {
                            let v = v.clone();
                            self.stack.push(v);
                        }
                    }
                    Op::StoreLocal(slot) => {
                        let v = pop!();
                        self.stack[base + slot as usize] = v;
                    }
                    Op::LoadGlobal(id) => {
                        let v = &self.ctx.globals[id as usize];
                        if let Value::Unset = v {
                            let v = tri!(self.load_global(id));
                            self.stack.push(v);
                        } else {
                            let v = v.clone();
                            self.stack.push(v);
                        }
                    }
                    Op::StoreGlobal(id) => {
                        let v = pop!();
                        self.ctx.globals[id as usize] = v;
                    }
                    Op::Pop => {
                        self.stack.pop();
                    }
                    Op::Dup => {
                        let v = top!().clone();
                        self.stack.push(v);
                    }
                    Op::Swap => {
                        let len = self.stack.len();
                        if len >= 2 {
                            self.stack.swap(len - 1, len - 2);
                        }
                    }
                    Op::Add => binary!(|x: i64, y: i64| Value::Int(x.wrapping_add(y)), ops::add),
                    Op::Sub => binary!(|x: i64, y: i64| Value::Int(x.wrapping_sub(y)), ops::sub),
                    Op::Mul => binary!(|x: i64, y: i64| Value::Int(x.wrapping_mul(y)), ops::mul),
                    Op::Div => divide!(wrapping_div, ops::div),
                    Op::Mod => divide!(wrapping_rem, ops::rem),
                    Op::Neg => {
                        let a = top!();
                        *a = match &*a {
                            Value::Int(x) => Value::Int(x.wrapping_neg()),
                            Value::Float(x) => Value::Float(-x),
                            other => tri!(Err(VmError::type_error(format!(
                                "cannot negate {}",
                                other.type_name()
                            )))),
                        };
                    }
                    Op::Eq => {
                        let b = pop!();
                        let a = top!();
                        let r = match (&*a, &b) {
                            (Value::Int(x), Value::Int(y)) => x == y,
                            _ => a.equals(&b),
                        };
                        *a = Value::Bool(r);
                    }
                    Op::Neq => {
                        let b = pop!();
                        let a = top!();
                        let r = match (&*a, &b) {
                            (Value::Int(x), Value::Int(y)) => x != y,
                            _ => !a.equals(&b),
                        };
                        *a = Value::Bool(r);
                    }
                    Op::Lt | Op::Gt | Op::Lte | Op::Gte => {
                        let b = pop!();
                        let a = top!();
                        let ord = match (&*a, &b) {
                            (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
                            _ => tri!(ops::compare(&*a, &b, op)),
                        };
                        let r = match ord {
                            None => false,
                            Some(o) => match op {
                                Op::Lt => o.is_lt(),
                                Op::Gt => o.is_gt(),
                                Op::Lte => o.is_le(),
                                _ => o.is_ge(),
                            },
                        };
                        *a = Value::Bool(r);
                    }
                    Op::And => {
                        let b = pop!();
                        let a = top!();
                        *a = Value::Bool(a.is_truthy() && b.is_truthy());
                    }
                    Op::Or => {
                        let b = pop!();
                        let a = top!();
                        *a = Value::Bool(a.is_truthy() || b.is_truthy());
                    }
                    Op::Not => {
                        let a = top!();
                        *a = Value::Bool(!a.is_truthy());
                    }
                    Op::Jump(target) => jump!(target),
                    Op::JumpIfTrue(target) => {
                        let c = pop!();
                        if c.is_truthy() {
                            pc = target as usize;
                        }
                    }
                    Op::JumpIfFalse(target) => {
                        let c = pop!();
                        let falsy = match c {
                            Value::Bool(b) => !b,
                            other => !other.is_truthy(),
                        };
                        if falsy {
                            pc = target as usize;
                        }
                    }
                    Op::Return => {
                        let v = if self.stack.len() > base + func.n_slots as usize {
                            pop!()
                        } else {
                            Value::Nil
                        };
                        ret!(v)
                    }
                    Op::Call(argc) => {
                        let callee = pop!();
                        save_pc!();
                        let called = tri!(self.call_value(callee, argc as usize));
                        finish_call!(called);
                    }
                    Op::CallMethod { argc, name } => {
                        save_pc!();
                        let called = tri!(self.call_method(argc as usize, name, None));
                        finish_call!(called);
                    }
                    Op::CallSite(idx) => {
                        save_pc!();
                        let called = tri!(self.call_site(idx));
                        finish_call!(called);
                    }
                    Op::Emit => {
                        let payload = pop!();
                        let channel = pop!();
                        let channel = match &channel {
                            Value::Str(s) => s.clone(),
                            other => Str::from(other.to_display()),
                        };
                        tri!(self.ctx.emit(&channel, &payload));
                    }
                    Op::EmitAwait => {
                        let payload = pop!();
                        let channel = pop!().to_display();
                        self.ctx.stats.emits += 1;
                        let fut = self.ctx.host.emit.emit_await(&channel, payload);
                        save_pc!();
                        return Ok(Exit::Suspend(Box::pin(async move {
                            fut.await.map_err(VmError::from)
                        })));
                    }
                    Op::TryBegin(chain) => {
                        self.handlers.push(Handler {
                            chain,
                            frame: fi as u32,
                            height: self.stack.len() as u32,
                        });
                    }
                    Op::TryEnd => {
                        if self.handlers.last().is_some_and(|h| h.frame as usize == fi) {
                            self.handlers.pop();
                        }
                    }
                    Op::Catch(end) => {
                        // Reached by falling through: the previous clause is done.
                        pc = end as usize;
                    }
                    Op::Throw => {
                        let v = pop!();
                        save_pc!();
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
                        match self.do_return(v)? {
                            Some(exit) => return Ok(exit),
                            None => continue 'frames,
                        }
                    }
                    Op::Propagate => {
                        let v = pop!();
                        let payload = match &v {
                            Value::Ok(inner) | Value::Some(inner) => {
                                self.stack.push((**inner).clone());
                                continue;
                            }
                            Value::Err(e) => (**e).clone(),
                            Value::None => Value::None,
                            _ => {
                                self.stack.push(v);
                                continue;
                            }
                        };
                        self.frames[fi].pc = (pc - 1) as u32;
                        if self.handlers.last().is_some_and(|h| h.frame as usize == fi) {
                            self.unwind(payload, None)?;
                            return Ok(Exit::Resume);
                        }
                        match self.do_return(v)? {
                            Some(exit) => return Ok(exit),
                            None => continue 'frames,
                        }
                    }
                    Op::BuildArray(n) => {
                        let start = self.stack.len() - n as usize;
                        let items: Vec<Value> = self.stack.drain(start..).collect();
                        self.stack.push(Value::array(items));
                    }
                    Op::BuildMap(n) => {
                        let start = self.stack.len() - 2 * n as usize;
                        let mut map = crate::value::MapInner::with_capacity_and_hasher(
                            n as usize,
                            Default::default(),
                        );
                        let mut it = self.stack.drain(start..);
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            let key = match k {
                                Value::Str(s) => s,
                                other => Str::from(other.to_display()),
                            };
                            map.insert(key, v);
                        }
                        drop(it);
                        self.stack.push(Value::Map(crate::value::Map::new(map)));
                    }
                    Op::BuildStruct(shape) => {
                        let layout = &vm.shapes[shape as usize];
                        let n = program.shapes[shape as usize].fields.len();
                        let start = self.stack.len() - n;
                        let values: Vec<Value> = match &layout.order {
                            None => self.stack.drain(start..).collect(),
                            Some(order) => {
                                let mut fields = vec![Value::Nil; layout.ty.fields.len()];
                                for (v, &pos) in self.stack.drain(start..).zip(order) {
                                    fields[pos as usize] = v;
                                }
                                fields
                            }
                        };
                        let value = match layout.kind {
                            ShapeKind::Struct => {
                                Value::Struct(StructObj::new(layout.ty.clone(), values))
                            }
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
                        self.stack.push(value);
                    }
                    Op::FieldGet(name) => {
                        let a = top!();
                        let v = tri!(ops::field_get(&*a, program.name(name)));
                        *a = v;
                    }
                    Op::FieldSet(name) => {
                        let v = pop!();
                        let obj = pop!();
                        tri!(ops::field_set(&obj, program.name(name), v));
                    }
                    Op::IndexGet => {
                        let idx = pop!();
                        let a = top!();
                        let v = match (&*a, &idx) {
                            (Value::Array(arr), Value::Int(i)) => {
                                let items = arr.0.lock();
                                match usize::try_from(*i).ok().and_then(|i| items.get(i)) {
                                    Some(v) => v.clone(),
                                    None => {
                                        let len = items.len();
                                        drop(items);
                                        tri!(Err(VmError::index_out_of_bounds(*i, len)))
                                    }
                                }
                            }
                            _ => tri!(ops::index_get(&*a, &idx)),
                        };
                        *a = v;
                    }
                    Op::IndexSet => {
                        let v = pop!();
                        let idx = pop!();
                        let coll = pop!();
                        tri!(ops::index_set(&coll, idx, v));
                    }
                    Op::Cast(target) => {
                        let a = top!();
                        let v = std::mem::take(a);
                        *a = cast(v, target);
                    }
                    Op::CheckType(name) => {
                        let a = top!();
                        let r = ops::check_type(&*a, program.name(name));
                        *a = Value::Bool(r);
                    }
                    Op::Await => {
                        let v = pop!();
                        save_pc!();
                        match v {
                            Value::Object(obj) => match crate::task::await_value(&obj) {
                                Some(fut) => return Ok(Exit::Suspend(fut)),
                                None => self.stack.push(Value::Object(obj)),
                            },
                            other => self.stack.push(other),
                        }
                    }
                    Op::AwaitAll(n) => {
                        let start = self.stack.len() - n as usize;
                        let items: Vec<Value> = self.stack.drain(start..).collect();
                        save_pc!();
                        match crate::task::await_all(items) {
                            Ok(v) => self.stack.push(v),
                            Err(fut) => return Ok(Exit::Suspend(fut)),
                        }
                    }
                    Op::SpawnAsync => {
                        tri!(Err(VmError::unsupported(
                            "SPAWN_ASYNC (spawning concurrent tasks) is not implemented yet"
                        )));
                    }
                    Op::BinLocalConst { op, slot, konst } => {
                        let start = pc - 1;
                        let a = &self.stack[base + slot as usize];
                        let b = &vm.consts[konst as usize];
                        if let (&Value::Int(x), &Value::Int(y)) = (a, b) {
                            int_fast!(op, x, y, start + 3);
                        }
                        let a = &self.stack[base + slot as usize];
                        let v = tri_at!(ops::binary(op, a, b), start + 2);
                        self.stack.push(v);
                        pc = start + 3;
                    }
                    Op::BinLocalLocal { op, a, b } => {
                        let start = pc - 1;
                        let x = &self.stack[base + a as usize];
                        let y = &self.stack[base + b as usize];
                        if let (&Value::Int(x), &Value::Int(y)) = (x, y) {
                            int_fast!(op, x, y, start + 3);
                        }
                        let x = &self.stack[base + a as usize];
                        let y = &self.stack[base + b as usize];
                        let v = tri_at!(ops::binary(op, x, y), start + 2);
                        self.stack.push(v);
                        pc = start + 3;
                    }
                    Op::BinLocalConstStore { op, slot, dest, konst, len } => {
                        let start = pc - 1;
                        let b = &vm.consts[konst as usize];
                        let a = &mut self.stack[base + slot as usize];
                        match (&mut *a, b) {
                            (Value::Int(x), Value::Int(y)) if slot == dest => {
                                if let Some(Value::Int(r)) = ops::int_bin(op, *x, *y) {
                                    *x = r;
                                    pc = start + len as usize;
                                    continue;
                                }
                            }
                            (Value::Str(s), b) if slot == dest && op == BinOp::Add => {
                                // `s = s + c`: append in place when `s` is not shared.
                                match b {
                                    Value::Str(t) => s.push_str(t),
                                    other => s.push_str(&other.to_display()),
                                }
                                pc = start + len as usize;
                                continue;
                            }
                            _ => {}
                        }
                        let a = &self.stack[base + slot as usize];
                        let v = match (a, b) {
                            (&Value::Int(x), &Value::Int(y)) if !op.is_comparison() && y != 0 => {
                                Value::Int(ops::int_arith(op, x, y).unwrap_or_default())
                            }
                            _ => tri_at!(ops::binary(op, a, b), start + 2),
                        };
                        self.stack[base + dest as usize] = v;
                        pc = start + len as usize;
                    }
                    Op::BinLocalLocalStore { op, a, b, dest, len } => {
                        let start = pc - 1;
                        if op == BinOp::Add && a == dest {
                            if let Value::Str(_) = &self.stack[base + a as usize] {
                                // `s = s + t`: append in place when `s` is not shared.
                                let rhs = self.stack[base + b as usize].clone();
                                if let Value::Str(s) = &mut self.stack[base + a as usize] {
                                    match &rhs {
                                        Value::Str(t) => s.push_str(t),
                                        other => s.push_str(&other.to_display()),
                                    }
                                }
                                pc = start + len as usize;
                                continue;
                            }
                        }
                        let x = &self.stack[base + a as usize];
                        let y = &self.stack[base + b as usize];
                        let v = match (x, y) {
                            (&Value::Int(x), &Value::Int(y)) if !op.is_comparison() && y != 0 => {
                                Value::Int(ops::int_arith(op, x, y).unwrap_or_default())
                            }
                            _ => tri_at!(ops::binary(op, x, y), start + 2),
                        };
                        self.stack[base + dest as usize] = v;
                        pc = start + len as usize;
                    }
                    Op::BinConst { op, konst } => {
                        let start = pc - 1;
                        let b = &vm.consts[konst as usize];
                        let a = top!();
                        match (&mut *a, b) {
                            (Value::Int(x), &Value::Int(y)) => {
                                if op.is_comparison() {
                                    *a = Value::Bool(ops::int_cmp(op, *x, y));
                                    pc = start + 2;
                                    continue;
                                } else if let Some(r) = ops::int_arith(op, *x, y) {
                                    *x = r;
                                    pc = start + 2;
                                    continue;
                                }
                            }
                            (Value::Str(s), b) if op == BinOp::Add => {
                                match b {
                                    Value::Str(t) => s.push_str(t),
                                    other => s.push_str(&other.to_display()),
                                }
                                pc = start + 2;
                                continue;
                            }
                            _ => {}
                        }
                        let v = tri_at!(ops::binary(op, &*a, b), start + 1);
                        *a = v;
                        pc = start + 2;
                    }
                    Op::Branch { op, jump_if, target } => {
                        let start = pc - 1;
                        let b = pop!();
                        let a = pop!();
                        let r = match (&a, &b) {
                            (Value::Int(x), Value::Int(y)) => ops::int_cmp(op, *x, *y),
                            _ => tri_at!(ops::truth(op, &a, &b), start),
                        };
                        if r == jump_if {
                            jump!(target);
                        } else {
                            pc = start + 2;
                        }
                    }
                    Op::BranchLocalConst { op, slot, konst, target } => {
                        let start = pc - 1;
                        let a = &self.stack[base + slot as usize];
                        let b = &vm.consts[konst as usize];
                        let r = match (a, b) {
                            (Value::Int(x), Value::Int(y)) => ops::int_cmp(op, *x, *y),
                            _ => tri_at!(ops::truth(op, a, b), start + 2),
                        };
                        if r {
                            pc = start + 4;
                        } else {
                            jump!(target);
                        }
                    }
                    Op::BranchLocalLocal { op, a, b, target } => {
                        let start = pc - 1;
                        let x = &self.stack[base + a as usize];
                        let y = &self.stack[base + b as usize];
                        let r = match (x, y) {
                            (Value::Int(x), Value::Int(y)) => ops::int_cmp(op, *x, *y),
                            _ => tri_at!(ops::truth(op, x, y), start + 2),
                        };
                        if r {
                            pc = start + 4;
                        } else {
                            jump!(target);
                        }
                    }
                    Op::StoreLocalDiscard(slot) => {
                        let v = pop!();
                        self.stack[base + slot as usize] = v;
                        pc += 2;
                    }
                    Op::Nop2 => pc += 1,
                    Op::CallGlobal { global, argc } => {
                        pc += 1;
                        // Fast path: a user function with the right arity.
                        if let Value::Func(f) = self.ctx.globals[global as usize] {
                            let callee = program.function(f.id);
                            if callee.n_params as u32 == argc
                                && callee.self_slot.is_none()
                                && self.frames.len() < self.ctx.config.max_call_depth
                            {
                                save_pc!();
                                let new_base = self.stack.len() - argc as usize;
                                for _ in argc..callee.n_slots as u32 {
                                    self.stack.push(Value::Unset);
                                }
                                self.frames.push(Frame {
                                    func: f.id,
                                    pc: 0,
                                    base: new_base as u32,
                                    native: NO_NATIVE,
                                });
                                self.fuel -= 1;
                                if self.fuel == 0 {
                                    self.fuel = FUEL;
                                    self.ctx.stats.ticks += FUEL as u64;
                                    return Ok(Exit::Yield);
                                }
                                fi += 1;
                                func = callee;
                                code = &callee.code;
                                base = new_base;
                                pc = 0;
                                continue;
                            }
                        }
                        let callee = match &self.ctx.globals[global as usize] {
                            Value::Unset => tri!(self.load_global(global)),
                            v => v.clone(),
                        };
                        save_pc!();
                        let called = tri!(self.call_value(callee, argc as usize));
                        finish_call!(called);
                    }
                    Op::ReturnLocal(slot) => {
                        let v = self.stack[base + slot as usize].clone();
                        pc += 1;
                        ret!(v)
                    }
                    Op::FieldGetLocal { slot, name } => {
                        pc += 1;
                        let obj = &self.stack[base + slot as usize];
                        let field = program.name(name);
                        let v = match obj {
                            Value::Struct(s) => match s.ty.field_index(field) {
                                Some(idx) => s.fields.lock()[idx].clone(),
                                None => tri!(Err(VmError::no_field(field, &s.ty.name))),
                            },
                            other => tri!(ops::field_get(other, field)),
                        };
                        self.stack.push(v);
                    }
                }
            }
        }
    }

    /// Finishes a call instruction: pushes a ready value, or says how the loop continues.
    /// `None` with the same frame on top means "carry on with the next instruction".
    #[inline]
    fn after_call(&mut self, called: Called) -> Option<Exit> {
        self.fuel -= 1;
        let out_of_fuel = self.fuel == 0;
        if out_of_fuel {
            self.fuel = FUEL;
            self.ctx.stats.ticks += FUEL as u64;
        }
        match called {
            Called::Entered => out_of_fuel.then_some(Exit::Yield),
            Called::Pushed => out_of_fuel.then_some(Exit::Yield),
            Called::Suspend(fut) => Some(Exit::Suspend(fut)),
            Called::Native => Some(Exit::Resume),
        }
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

    /// `CALL_METHOD`: receiver below `argc` arguments.
    fn call_method(
        &mut self,
        argc: usize,
        name: concerto_ir::NameId,
        schema: Option<u32>,
    ) -> Result<Called, VmError> {
        let recv_idx = self.stack.len() - argc - 1;
        // Hashmap get/has/set answered at once by the store: no intermediate values.
        if let Value::Ref(r) = self.stack[recv_idx] {
            if r.kind == crate::value::RefKind::Hashmap {
                let method = self.ctx.vm.methods[name as usize];
                if let Some(called) = self.hashmap_fast(r.index, method, argc, recv_idx) {
                    return called;
                }
            }
        }
        // User methods on structs, enums and tools.
        let user = {
            let vm = &self.ctx.vm;
            match &self.stack[recv_idx] {
                Value::Struct(s) if s.ty.key != u32::MAX => {
                    vm.method_table.get(&(s.ty.key, name)).copied()
                }
                Value::Struct(s) => {
                    let key = vm.type_key(&s.ty.name);
                    vm.method_table.get(&(key, name)).copied()
                }
                Value::Enum(e) => vm.method_table.get(&(e.type_id, name)).copied(),
                Value::Ref(r) if r.kind == crate::value::RefKind::Tool => {
                    let tool = &vm.program.tools[r.index as usize];
                    let method = vm.program.name(name).clone();
                    match tool.methods.iter().find(|(m, _)| *m == method) {
                        Some((_, fid)) => Some(*fid),
                        None => {
                            let tool_name = tool.decl.name.clone();
                            self.drop_args(argc + 1);
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
            if let Value::Ref(r) = self.stack[recv_idx] {
                // A tool method's `self` is the tool instance.
                if r.kind == crate::value::RefKind::Tool {
                    self.stack[recv_idx] = self.ctx.vm.tool_instances[r.index as usize].clone();
                }
            }
            self.enter(fid, argc, true)?;
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
            &self.stack[recv_idx..],
        );
        self.stack.truncate(recv_idx);
        self.flow(flow?)
    }

    /// `map.get(k)`, `map.has(k)`, `map.set(k, v)` straight to the store, without the
    /// generic method machinery; `None` for every other call.
    #[inline]
    fn hashmap_fast(
        &mut self,
        map: u32,
        method: Method,
        argc: usize,
        recv_idx: usize,
    ) -> Option<Result<Called, VmError>> {
        use crate::host::{HostError, Reply};
        fn done<T: Send + 'static>(
            stack: &mut Vec<Value>,
            recv_idx: usize,
            r: Reply<Result<T, HostError>>,
            to_value: fn(T) -> Value,
        ) -> Result<Called, VmError> {
            stack.truncate(recv_idx);
            match r {
                Reply::Ready(Ok(v)) => {
                    stack.push(to_value(v));
                    Ok(Called::Pushed)
                }
                Reply::Ready(Err(e)) => Err(e.into()),
                Reply::Pending(fut) => Ok(Called::Suspend(Box::pin(async move {
                    fut.await.map(to_value).map_err(VmError::from)
                }))),
            }
        }
        let args = &self.stack[recv_idx + 1..];
        let store = &*self.ctx.host.memory;
        let text;
        let key = match args.first() {
            Some(Value::Str(s)) => s.as_str(),
            Some(other) => {
                text = other.to_display();
                text.as_str()
            }
            None => return None,
        };
        Some(match (method, argc) {
            (Method::Get, 1) => {
                let r = store.hashmap_get(map, key);
                done(&mut self.stack, recv_idx, r, Value::option)
            }
            (Method::Has, 1) => {
                let r = store.hashmap_has(map, key);
                done(&mut self.stack, recv_idx, r, Value::Bool)
            }
            (Method::Set, 2) => {
                let k = match &args[0] {
                    Value::Str(s) => s.clone(),
                    _ => Str::from(key),
                };
                let r = store.hashmap_set(map, k, args[1].clone());
                done(&mut self.stack, recv_idx, r, |()| Value::Nil)
            }
            _ => return None,
        })
    }

    fn call_site(&mut self, idx: u32) -> Result<Called, VmError> {
        let vm = self.ctx.vm.clone();
        match &vm.program.call_sites[idx as usize] {
            concerto_ir::CallSite::MethodWithSchema { name, argc, schema } => {
                self.call_method(*argc as usize, *name, Some(*schema))
            }
            concerto_ir::CallSite::Native { name, argc } => {
                let argc = *argc as usize;
                let native = vm.program.name(*name);
                match builtins::lookup(native) {
                    Some(callee) => self.call_value(callee, argc),
                    None => {
                        self.drop_args(argc);
                        Err(VmError::call_error(format!(
                            "unknown native function '{native}'"
                        )))
                    }
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
                let start = self.stack.len() - argc;
                let mut args = Vec::with_capacity(argc + 1);
                args.push(Value::Ref(crate::value::RefValue {
                    kind: crate::value::RefKind::Agent,
                    program: vm.registry_id,
                    index: *agent,
                }));
                args.extend(self.stack.drain(start..));
                let method_name = vm.program.name(*method);
                let flow = methods::call_builtin_method(
                    &mut self.ctx,
                    Method::from_name(method_name),
                    method_name,
                    *schema,
                    &args,
                );
                self.flow(flow?)
            }
            concerto_ir::CallSite::Tool {
                tool,
                function,
                argc,
            } => {
                let recv = vm.tool_instances[*tool as usize].clone();
                let argc = *argc as usize;
                self.stack.insert(self.stack.len() - argc, recv);
                self.enter(*function, argc, true)?;
                Ok(Called::Entered)
            }
            concerto_ir::CallSite::Hashmap { op, hashmap } => {
                let flow = methods::hashmap_opcode(&mut self.ctx, *op, *hashmap, &mut self.stack)?;
                self.flow(flow)
            }
        }
    }
}

/// `CAST` semantics.
fn cast(v: Value, target: CastTarget) -> Value {
    match target {
        CastTarget::Int => match v {
            Value::Float(f) => Value::Int(f as i64),
            Value::Bool(b) => Value::Int(b as i64),
            Value::Str(ref s) => match s.trim().parse::<i64>() {
                Ok(i) => Value::Int(i),
                Err(_) => v,
            },
            other => other,
        },
        CastTarget::Float => match v {
            Value::Int(i) => Value::Float(i as f64),
            Value::Bool(b) => Value::Float(if b { 1.0 } else { 0.0 }),
            Value::Str(ref s) => match s.trim().parse::<f64>() {
                Ok(f) => Value::Float(f),
                Err(_) => v,
            },
            other => other,
        },
        CastTarget::String => match v {
            Value::Str(_) => v,
            other => Value::str(other.to_display()),
        },
        CastTarget::Bool => Value::Bool(v.is_truthy()),
        CastTarget::Other => v,
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
