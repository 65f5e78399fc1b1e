//! Cold ops, kept out of the dispatch loop so its hot state stays in registers: spawning a
//! task, building arrays, maps and structs, emits, field and index stores, casts, type
//! checks, and globals that are not set yet.

use std::sync::Arc;

use concerto_ir::{CastTarget, GlobalKind};

use super::Execution;
use crate::error::{ErrorKind, VmError};
use crate::ops;
use crate::value::{EnumObj, Str, StructObj, Value};
use crate::vm::ShapeKind;

impl Execution {
    /// `SPAWN_ASYNC`: the function in `at` becomes a task running in a child execution.
    #[inline(never)]
    pub(super) fn spawn_op(&mut self, at: usize) -> Result<(), VmError> {
        let callee = std::mem::take(&mut self.stack[at]);
        let program = self.ctx.vm.program.clone();
        let func = match &callee {
            Value::Func(f) if f.id.index() < program.functions.len() => f.id,
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
        let host = match &self.ctx.host.tasks {
            Some(tasks) => tasks.child(&self.ctx.host, self.ctx.spawned),
            None => self.ctx.host.clone(),
        };
        self.ctx.spawned += 1;
        let mut child = Execution::new(self.ctx.vm.clone(), host, config);
        child.ctx.globals = self.ctx.globals.clone();
        child.ctx.child_stats = self.ctx.child_stats.clone();
        child.ctx.mocks = self.ctx.mocks.clone();
        child.ctx.captured = self.ctx.captured.clone();
        let parent = self.code_parent_span();
        let _entered = parent.as_ref().map(tracing::Span::enter);
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
    pub(super) fn build_array(&mut self, from: usize, n: u32) {
        let items: Vec<Value> = self.stack[from..from + n as usize]
            .iter_mut()
            .map(std::mem::take)
            .collect();
        self.stack[from] = Value::array(items);
    }

    #[inline(never)]
    pub(super) fn build_map(&mut self, from: usize, n: u32) {
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
    pub(super) fn build_struct(&mut self, from: usize, shape: u32) {
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
    pub(super) fn emit_op(&mut self, chan: usize, payload: usize) -> Result<(), VmError> {
        let channel = match &self.stack[chan] {
            Value::Str(s) => s.clone(),
            other => Str::from(other.to_display()),
        };
        self.ctx.emit(&channel, &self.stack[payload])
    }

    #[inline(never)]
    pub(super) fn field_set_op(
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
    pub(super) fn index_set_op(
        &mut self,
        coll: usize,
        idx: usize,
        src: usize,
    ) -> Result<(), VmError> {
        let v = self.stack[src].clone();
        let i = self.stack[idx].clone();
        ops::index_set(&self.stack[coll], i, v)
    }

    #[inline(never)]
    pub(super) fn cast_op(&mut self, reg: usize, target: CastTarget) -> Result<(), VmError> {
        let v = std::mem::take(&mut self.stack[reg]);
        self.stack[reg] = cast(v, target)?;
        Ok(())
    }

    #[inline(never)]
    pub(super) fn check_type_op(&mut self, reg: usize, name: concerto_ir::NameId) {
        let r = ops::check_type(&self.stack[reg], self.ctx.vm.program.name(name));
        self.stack[reg] = Value::Bool(r);
    }

    /// Resolves a global that is unset in the table (constants not initialised, fallbacks,
    /// undefined names).
    #[cold]
    pub(super) fn load_global(&self, id: u32) -> Result<Value, VmError> {
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
