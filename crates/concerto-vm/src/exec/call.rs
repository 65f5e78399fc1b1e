//! Calls and returns off the dispatch loop's inline paths: entering a code frame, calling
//! any callable value (functions, closures, built-ins, enum constructors, agents), methods
//! (user, tool and built-in), the IR's call sites, and returning into a native frame or
//! out of the execution.

use std::sync::Arc;

use concerto_ir::FuncId;

use super::frame::{Frame, NATIVE_FUNC, NO_NATIVE};
use super::{Execution, Exit, Flow};
use crate::builtins;
use crate::error::{ErrorKind, VmError};
use crate::host::{BoxFuture, MapId};
use crate::methods::{self, Method};
use crate::ops;
use crate::value::{EnumObj, Value};

/// Outcome of dispatching a call.
pub(super) enum Called {
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
    /// Pushes a code frame for `func` whose register 0 is `base`. The `argc` arguments are in
    /// `base..base + argc`; with `has_receiver` the method receiver is in `base` and the
    /// arguments follow it.
    #[inline]
    pub(super) fn enter(
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
    pub(super) fn call_value(
        &mut self,
        callee: Value,
        base: usize,
        argc: usize,
    ) -> Result<Called, VmError> {
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
                if let Some(span) = cont.span()
                    && let Some(caller) = self.frames.last()
                    && caller.native == NO_NATIVE
                {
                    // The caller's pc was saved after the call op.
                    let program = &self.ctx.vm.program;
                    let func = program.function(caller.func);
                    let at = func
                        .spans
                        .get(caller.pc.saturating_sub(1) as usize)
                        .copied()
                        .unwrap_or_default();
                    crate::spans::record_call_site(span, &func.name, &program.source_file, at);
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

    /// `CALL_METHOD`: the receiver in `base`, the arguments after it; the result goes to
    /// `base`.
    pub(super) fn call_method(
        &mut self,
        base: usize,
        argc: usize,
        name: concerto_ir::NameId,
        schema: Option<u32>,
    ) -> Result<Called, VmError> {
        let parent = self.code_parent_span();
        let _entered = parent.as_ref().map(tracing::Span::enter);
        // Hashmap get/has/set answered at once by the store: no intermediate values.
        if let Value::Ref(r) = self.stack[base]
            && r.kind == crate::value::RefKind::Hashmap
        {
            let method = self.ctx.vm.methods[name.index()];
            if let Some(called) = self.hashmap_fast(MapId(r.index), method, argc, base) {
                return called;
            }
        }
        // The common Option/Result queries, without the generic method machinery.
        if argc == 0 {
            let method = self.ctx.vm.methods[name.index()];
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
                            self.ctx.stats.tool_calls += 1;
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
        let method = vm.methods[name.index()];
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

    pub(super) fn call_site(&mut self, base: usize, idx: u32) -> Result<Called, VmError> {
        let parent = self.code_parent_span();
        let _entered = parent.as_ref().map(tracing::Span::enter);
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

    /// Returns `value` from the current code frame (the general path).
    pub(super) fn do_return(&mut self, value: Value) -> Result<Option<Exit>, VmError> {
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
}
