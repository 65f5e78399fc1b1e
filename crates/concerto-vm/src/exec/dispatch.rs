//! The dispatch loop (`Execution::dispatch`), which runs the ops of code frames, and the
//! small helpers only it uses (register stores, in-place string appends, timeout operands).

use std::time::Duration;

use concerto_ir::{BinOp, Op, Program};

use super::call::Called;
use super::frame::{Frame, Handler, NO_NATIVE};
use super::hashmap_fast::GetNow;
use super::{Execution, Exit};
use crate::error::{ErrorKind, VmError};
use crate::host::MapId;
use crate::methods::Method;
use crate::ops;
use crate::value::{Str, Value};

impl Execution {
    /// The dispatch loop. The outer loop (`'frames`) loads the top frame into locals; the op
    /// loop (`'ops`) runs its ops and switches those locals in place for calls and returns
    /// between code frames. Ops that suspend, yield, pause or hand a thrown value to a
    /// handler `return` directly, errors leave through `?` (marked with the op that raised
    /// them by `at_op!`), and calls off the inline paths that cannot go on with the next op
    /// end the op loop by `break 'ops` with a [`Leave`]. Two macros hide control flow, for
    /// speed, and say so where they are defined: `ret!` (every return) and `enter_inline!`
    /// (calls that go inline).
    ///
    /// `DEBUG` is a separate instantiation for debug mode (stepping, breakpoints, tracing):
    /// it asks the debugger before every op whether to pause. The ordinary instantiation has
    /// no such check (the `if DEBUG` blocks compile away).
    pub(super) fn dispatch<const DEBUG: bool>(&mut self) -> Result<Exit, VmError> {
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
            // The `Result` `$e` with its error marked as raised by the current op: on `Err`
            // the frame's pc is set to this op, so the error's location and the frame's
            // `try` see it there. No control flow: the use site applies `?`.
            macro_rules! at_op {
                ($e:expr) => {
                    ($e).map_err(|err| {
                        self.frames[fi].pc = (pc - 1) as u32;
                        err
                    })
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
            // Jumps to `$target`, spending fuel when the jump goes backwards (a loop). Yields
            // `true` when that used up the fuel: the use site then saves the pc and yields.
            macro_rules! jump {
                ($target:expr) => {{
                    let target = $target as usize;
                    let backward = target < pc;
                    pc = target;
                    backward && self.spend_fuel()
                }};
            }
            // Returns `$v` from this frame, and HIDES CONTROL FLOW: it never falls through.
            // When the frame below is a code frame and no handler of this frame is left, it
            // pops the frame, switches the locals above to the caller and `continue`s the op
            // loop there. Otherwise (a native frame or the end of the execution waits, or a
            // handler must go) it saves the pc and calls `do_return`, then leaves `dispatch`
            // with `do_return`'s error (`?`) or `return Ok(exit)`, or does `continue 'frames`
            // when `do_return` went back into a code frame. It stays a macro that does so:
            // making it yield what to do, for each use site to act on, cost 2-3 % more
            // instructions in the dispatch benchmarks, even in a loop without calls.
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
            // After a call made off the inline paths (its pc saved): spends the call's fuel
            // and yields how the loop goes on: `None`, to the next op (the result is in
            // place); `Some(leave)`, for the use site to `break 'ops` with, to go into the
            // frame the call pushed (`Reload`) or to leave the loop when the callee waits
            // (its result is to land in `$dst`), a native frame must run first, or the fuel
            // ran out.
            macro_rules! finish_call {
                ($called:expr, $dst:expr) => {{
                    let out_of_fuel = self.spend_fuel();
                    match $called {
                        Called::Done if !out_of_fuel => None,
                        Called::Done => Some(Leave::Exit(Exit::Yield)),
                        Called::Entered if out_of_fuel => Some(Leave::Exit(Exit::Yield)),
                        Called::Entered => Some(Leave::Reload),
                        Called::Suspend(fut) => {
                            self.resume_dst = $dst;
                            Some(Leave::Exit(Exit::Suspend(fut)))
                        }
                        Called::Native => Some(Leave::Exit(Exit::Resume)),
                    }
                }};
            }

            // Enters code function `$fid` (`$callee`) whose register 0 is `$at` and whose
            // `$argc` parameters (after `self` when it has one) are already in place, without
            // leaving the loop, and HIDES CONTROL FLOW. Below the call depth limit it saves
            // the caller's pc, pushes the frame and spends the call's fuel; then it does
            // `return Ok(Exit::Yield)` when that used up the fuel (the new frame runs when the
            // loop comes back), and otherwise switches the locals above to the callee and
            // `continue`s the op loop there. Only at the depth limit does it fall through, to
            // the use site's general path, which reports the error. It stays a macro that
            // does so: moving the depth check, the yield and the `continue` to the use sites
            // cost 1.5-3 % more instructions in the dispatch benchmarks, even in a loop
            // without calls.
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

            // The ops of the frame in the locals above (`ret!` and `enter_inline!` switch them
            // to another code frame), until a call breaks out with a `Leave`.
            let leave = 'ops: loop {
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
                    Op::Take { dst, src } => {
                        // `src` is a local no path reads again (lowering proved it): move
                        // the value, no reference count changes. In debug mode locals stay
                        // visible to the debugger, so the value is copied as by `Move`.
                        let v = if DEBUG {
                            reg!(src).clone()
                        } else {
                            std::mem::take(&mut reg!(src))
                        };
                        store(&mut reg!(dst), v);
                    }
                    Op::LoadLocal { dst, slot, global } => {
                        let v = match &reg!(slot) {
                            Value::Unset => at_op!(self.load_global(global))?,
                            v => v.clone(),
                        };
                        reg!(dst) = v;
                    }
                    Op::LoadGlobal { dst, global } => {
                        let v = match &self.ctx.globals[global as usize] {
                            Value::Unset => at_op!(self.load_global(global))?,
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
                        let v = at_op!(ops::binary(op, &reg!(a), &reg!(b)))?;
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
                        let v = at_op!(ops::binary(op, &reg!(a), rhs))?;
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
                        let v = at_op!(ops::binary(op, &reg!(a), &rhs))?;
                        reg!(dst) = v;
                    }
                    Op::Neg { dst, src } => {
                        let v = match &reg!(src) {
                            Value::Int(x) => Value::Int(x.wrapping_neg()),
                            Value::Float(x) => Value::Float(-x),
                            other => at_op!(Err(VmError::type_error(format!(
                                "cannot negate {}",
                                other.type_name()
                            ))))?,
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
                    Op::Jump { target } => {
                        if jump!(target) {
                            save_pc!();
                            return Ok(Exit::Yield);
                        }
                    }
                    Op::JumpIf { cond, when, target } => {
                        let truthy = match &reg!(cond) {
                            Value::Bool(b) => *b,
                            other => other.is_truthy(),
                        };
                        if truthy == when && jump!(target) {
                            save_pc!();
                            return Ok(Exit::Yield);
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
                            (x, y) => at_op!(ops::truth(op, x, y))?,
                        };
                        if r == when && jump!(target) {
                            save_pc!();
                            return Ok(Exit::Yield);
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
                            (x, y) => at_op!(ops::truth(op, x, y))?,
                        };
                        if r == when && jump!(target) {
                            save_pc!();
                            return Ok(Exit::Yield);
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
                            x => at_op!(ops::truth(op, x, &Value::Int(i64::from(imm))))?,
                        };
                        if r == when && jump!(target) {
                            save_pc!();
                            return Ok(Exit::Yield);
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
                        let called = at_op!(self.call_value(callee, at, argc as usize))?;
                        if let Some(leave) = finish_call!(called, at) {
                            break 'ops leave;
                        }
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
                            Value::Unset => at_op!(self.load_global(global))?,
                            v => v.clone(),
                        };
                        save_pc!();
                        let called = at_op!(self.call_value(callee, at, argc as usize))?;
                        if let Some(leave) = finish_call!(called, at) {
                            break 'ops leave;
                        }
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
                            && vm.methods[name.index()] == Method::Get
                            && vm.methods[next.index()] == Method::Unwrap
                        {
                            let map = r.index;
                            match at_op!(self.hashmap_get_now(MapId(map), at))? {
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
                                    if let Some(leave) = finish_call!(Called::Suspend(fut), at) {
                                        break 'ops leave;
                                    }
                                }
                            }
                        }
                        // Hashmap get/has/set: answered by the store without the generic
                        // method machinery.
                        if let Value::Ref(r) = self.stack[at]
                            && r.kind == crate::value::RefKind::Hashmap
                        {
                            let method = vm.methods[name.index()];
                            if let Some(called) =
                                self.hashmap_fast(MapId(r.index), method, argc as usize, at)
                            {
                                save_pc!();
                                let called = at_op!(called)?;
                                if let Some(leave) = finish_call!(called, at) {
                                    break 'ops leave;
                                }
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
                        let called = at_op!(self.call_method(at, argc as usize, name, None))?;
                        if let Some(leave) = finish_call!(called, at) {
                            break 'ops leave;
                        }
                    }
                    Op::CallSite { base: cb, site } => {
                        let at = base + cb as usize;
                        save_pc!();
                        let called = at_op!(self.call_site(at, site))?;
                        if let Some(leave) = finish_call!(called, at) {
                            break 'ops leave;
                        }
                    }
                    Op::Emit { chan, payload } => {
                        at_op!(self.emit_op(base + chan as usize, base + payload as usize))?;
                        if self.ctx.settle_emits
                            && let Some(settled) = self.ctx.host.emit.settle()
                        {
                            // The channel register is written back unchanged on resume.
                            let keep = reg!(chan).clone();
                            save_pc!();
                            self.resume_dst = base + chan as usize;
                            return Ok(Exit::Suspend(Box::pin(async move {
                                settled.await.map_err(VmError::from)?;
                                Ok(keep)
                            })));
                        }
                    }
                    Op::EmitAwait { chan, payload } => {
                        let channel = reg!(chan).to_display();
                        let payload = reg!(payload).clone();
                        self.ctx.stats.emits += 1;
                        let fut = self.ctx.host.emit.emit_await(&channel, payload);
                        let span =
                            crate::spans::emit_await(self.code_parent_span().as_ref(), &channel);
                        save_pc!();
                        self.resume_dst = base + chan as usize;
                        return Ok(Exit::Suspend(Box::pin(tracing::Instrument::instrument(
                            async move {
                                let answer = fut.await.map_err(VmError::from);
                                if let Err(e) = &answer {
                                    crate::spans::record_error(
                                        &tracing::Span::current(),
                                        e.kind().as_str(),
                                    );
                                }
                                answer
                            },
                            span,
                        ))));
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
                                None => at_op!(Err(VmError::no_field(field, &s.ty.name)))?,
                            },
                            other => at_op!(ops::field_get(other, field))?,
                        };
                        reg!(dst) = v;
                    }
                    Op::FieldSet { obj, src, name } => {
                        at_op!(self.field_set_op(base + obj as usize, base + src as usize, name))?
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
                                        at_op!(Err(VmError::index_out_of_bounds(i, len)))?
                                    }
                                }
                            }
                            (c, i) => match crate::hashmaps::index(c, i, &mut self.ctx) {
                                Some(crate::hashmaps::Indexed::Now(r)) => at_op!(r)?,
                                Some(crate::hashmaps::Indexed::Later(fut)) => {
                                    save_pc!();
                                    self.resume_dst = base + dst as usize;
                                    return Ok(Exit::Suspend(fut));
                                }
                                None => at_op!(ops::index_get(c, i))?,
                            },
                        };
                        reg!(dst) = v;
                    }
                    Op::IndexSet { coll, idx, src } => at_op!(self.index_set_op(
                        base + coll as usize,
                        base + idx as usize,
                        base + src as usize
                    ))?,
                    Op::Cast { reg, target } => at_op!(self.cast_op(base + reg as usize, target))?,
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
                        at_op!(self.spawn_op(at))?;
                    }
                }
            };
            match leave {
                Leave::Reload => continue 'frames,
                Leave::Exit(exit) => return Ok(exit),
            }
        }
    }
}

/// Why the op loop of a frame stopped (what its `break 'ops` carries).
enum Leave {
    /// The top frame is not the one in the loop's locals any more (a call off the inline
    /// paths pushed a frame): load them again.
    Reload,
    /// Leave the dispatch loop with this.
    Exit(Exit),
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

/// `Some(duration)` for a timeout operand in milliseconds (0: none).
fn millis(ms: u32) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
}
