//! `Pipeline.run(input)`: runs the stages in order with their lifecycle emits, retries and
//! timeouts, as a native continuation (stages are ordinary Concerto frames).
//!
//! Emits: `pipeline:start {name, stages}`, then per stage `pipeline:stage_start
//! {pipeline, stage}` and `pipeline:stage_complete {pipeline, stage, duration_ms}`, finally
//! `pipeline:complete {name, duration_ms}`. A stage fails when it returns `Err(e)` or raises a
//! runtime error; after its `@retry` attempts the run emits `pipeline:error {pipeline, stage,
//! error}` and returns `Err("pipeline 'P' failed at stage 's': <error>")`.
//!
//! Contracts (7ad10db, `pipeline P(input: T) -> U`): the input is checked against `T` before
//! the first stage and the result against `U` after the last (a `Result<V, E>` contract is
//! checked against `V`, since stage results are unwrapped); a mismatch fails the run like a
//! stage does, at the first or last stage, naming the pipeline, the stage and both types.
//! Types this check does not know (generic parameters, `any`) are not checked.

use std::time::{Duration, Instant};

use concerto_ir::model::Decorator;

use crate::error::VmError;
use crate::exec::{Continuation, Ctx, Step};
use crate::value::{FuncRef, Value};

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    Running,
    Waiting,
}

/// The state of one `run`.
pub(crate) struct PipelineRun {
    pipeline: u32,
    name: String,
    stage: usize,
    attempt: u32,
    value: Value,
    state: State,
    started: Option<Instant>,
    stage_started: Option<Instant>,
    frame_name: String,
    /// The run's span, and the span of the stage attempt in progress.
    span: tracing::Span,
    stage_span: Option<tracing::Span>,
}

#[derive(Clone, Copy)]
enum Backoff {
    None,
    Linear,
    Exponential,
}

struct Policy {
    max_attempts: u32,
    backoff: Backoff,
    timeout: Option<f64>,
}

fn policy(decorators: &[Decorator]) -> Policy {
    let mut p = Policy {
        max_attempts: 1,
        backoff: Backoff::Exponential,
        timeout: None,
    };
    for d in decorators {
        match d.name.as_str() {
            "retry" => {
                let max = d
                    .named_arg("max")
                    .or_else(|| d.args.iter().find(|a| a.is_u64()))
                    .and_then(|v| v.as_u64())
                    .unwrap_or(3);
                p.max_attempts = max.clamp(1, 100) as u32;
                p.backoff = match d.named_arg("backoff").and_then(|v| v.as_str()) {
                    Some("none") => Backoff::None,
                    Some("linear") => Backoff::Linear,
                    _ => Backoff::Exponential,
                };
            }
            "timeout" => {
                p.timeout = d
                    .named_arg("seconds")
                    .or_else(|| d.args.first())
                    .and_then(|v| v.as_f64())
                    .filter(|s| *s > 0.0);
            }
            _ => {}
        }
    }
    p
}

impl PipelineRun {
    pub(crate) fn new(ctx: &Ctx, pipeline: u32, input: Value) -> PipelineRun {
        let def = &ctx.program().pipelines[pipeline as usize];
        let name = def.name.to_string();
        PipelineRun {
            span: crate::spans::pipeline(&name, def.stages.len()),
            stage_span: None,
            pipeline,
            frame_name: format!("{name}.run"),
            name,
            stage: 0,
            attempt: 0,
            value: input,
            state: State::Start,
            started: None,
            stage_started: None,
        }
    }

    fn stage_name(&self, ctx: &Ctx) -> String {
        ctx.program().pipelines[self.pipeline as usize].stages[self.stage]
            .name
            .to_string()
    }

    fn call_stage(&mut self, ctx: &mut Ctx) -> Result<Step, VmError> {
        let program = ctx.program().clone();
        let stage = &program.pipelines[self.pipeline as usize].stages[self.stage];
        if self.attempt == 0 {
            ctx.emit(
                "pipeline:stage_start",
                &Value::map([
                    ("pipeline", Value::str(&*self.name)),
                    ("stage", Value::str(&*stage.name)),
                ]),
            )?;
        }
        self.attempt += 1;
        self.stage_span = Some(crate::spans::stage(
            &self.span,
            &self.name,
            &stage.name,
            self.attempt,
        ));
        self.stage_started = Some(ctx.now());
        self.state = State::Running;
        let n_params = program.function(stage.function).n_params as usize;
        let mut args = Vec::with_capacity(n_params);
        if n_params > 0 {
            args.push(self.value.clone());
            args.resize(n_params, Value::Nil);
        }
        let func = Value::Func(FuncRef {
            program: ctx.vm.registry_id,
            id: stage.function,
        });
        Ok(Step::Call(func, args.into()))
    }

    fn next_stage(&mut self, ctx: &mut Ctx) -> Result<Step, VmError> {
        let stages = ctx.program().pipelines[self.pipeline as usize].stages.len();
        if self.stage >= stages {
            let program = ctx.program().clone();
            let def = &program.pipelines[self.pipeline as usize];
            if let Some(ty) = &def.output_type
                && let Some(last) = def.stages.last()
            {
                let wanted = ok_type(ty);
                if conforms(&program, &self.value, wanted) == Some(false) {
                    self.stage = stages - 1;
                    let why = format!(
                        "pipeline '{}' declares result type {ty}, but its last stage '{}' gave {}",
                        self.name,
                        last.name,
                        self.value.type_name()
                    );
                    return self.contract_failed(ctx, why);
                }
            }
            let duration = self.started.map_or(0, |s| ctx.elapsed_ms(s));
            ctx.emit(
                "pipeline:complete",
                &Value::map([
                    ("name", Value::str(&*self.name)),
                    ("duration_ms", Value::Int(duration)),
                ]),
            )?;
            return Ok(Step::Return(Value::ok(std::mem::take(&mut self.value))));
        }
        self.attempt = 0;
        self.call_stage(ctx)
    }

    /// A contract mismatch: fails the run at the current stage, without retries.
    fn contract_failed(&mut self, ctx: &mut Ctx, why: String) -> Result<Step, VmError> {
        self.attempt = u32::MAX;
        self.stage_failed(ctx, why)
    }

    fn stage_failed(&mut self, ctx: &mut Ctx, error: String) -> Result<Step, VmError> {
        if let Some(span) = self.stage_span.take() {
            crate::spans::record_error(&span, "stage_failed");
        }
        let program = ctx.program().clone();
        let stage = &program.pipelines[self.pipeline as usize].stages[self.stage];
        let policy = policy(&stage.decorators);
        if self.attempt < policy.max_attempts {
            let delay = match policy.backoff {
                Backoff::None => Duration::ZERO,
                Backoff::Linear => Duration::from_secs(u64::from(self.attempt)),
                Backoff::Exponential => Duration::from_secs(1u64 << (self.attempt - 1).min(10)),
            };
            self.state = State::Waiting;
            return Ok(Step::Suspend(ctx.sleep(delay)));
        }
        let stage_name = stage.name.to_string();
        crate::spans::record_error(&self.span, "stage_failed");
        ctx.emit(
            "pipeline:error",
            &Value::map([
                ("pipeline", Value::str(&*self.name)),
                ("stage", Value::str(&*stage_name)),
                ("error", Value::str(&*error)),
            ]),
        )?;
        Ok(Step::Return(Value::err(Value::str(format!(
            "pipeline '{}' failed at stage '{stage_name}': {error}",
            self.name
        )))))
    }
}

impl Continuation for PipelineRun {
    fn resume(&mut self, ctx: &mut Ctx, input: Result<Value, VmError>) -> Result<Step, VmError> {
        match self.state {
            State::Start => {
                self.started = Some(ctx.now());
                let stages = ctx.program().pipelines[self.pipeline as usize].stages.len();
                ctx.emit(
                    "pipeline:start",
                    &Value::map([
                        ("name", Value::str(&*self.name)),
                        ("stages", Value::Int(stages as i64)),
                    ]),
                )?;
                let program = ctx.program().clone();
                let def = &program.pipelines[self.pipeline as usize];
                if let Some(ty) = &def.input_type
                    && !def.stages.is_empty()
                    && conforms(&program, &self.value, ty) == Some(false)
                {
                    let why = format!(
                        "pipeline '{}' expects input of type {ty} at stage '{}', got {}",
                        self.name,
                        def.stages[0].name,
                        self.value.type_name()
                    );
                    return self.contract_failed(ctx, why);
                }
                self.next_stage(ctx)
            }
            State::Waiting => {
                input?;
                self.call_stage(ctx)
            }
            State::Running => {
                let result = match input {
                    Ok(Value::Err(e)) => Err(e.to_display()),
                    Ok(Value::Ok(v)) => Ok((*v).clone()),
                    Ok(other) => Ok(other),
                    // A thrown value fails the stage with its display form.
                    Err(err) if err.kind() == crate::error::ErrorKind::Unhandled => Err(err
                        .value()
                        .map_or_else(|| err.message().to_string(), Value::to_display)),
                    Err(err) if err.is_catchable() => Err(err.message().to_string()),
                    Err(err) => return Err(err),
                };
                let elapsed = self.stage_started.map_or(0, |s| ctx.elapsed_ms(s));
                let program = ctx.program().clone();
                let policy = policy(
                    &program.pipelines[self.pipeline as usize].stages[self.stage].decorators,
                );
                let result = match (result, policy.timeout) {
                    (Ok(_), Some(limit)) if elapsed as f64 > limit * 1000.0 => Err(format!(
                        "timeout exceeded ({:.3}s > {limit}s)",
                        elapsed as f64 / 1000.0
                    )),
                    (r, _) => r,
                };
                match result {
                    Ok(v) => {
                        self.stage_span = None;
                        let stage_name = self.stage_name(ctx);
                        ctx.emit(
                            "pipeline:stage_complete",
                            &Value::map([
                                ("pipeline", Value::str(&*self.name)),
                                ("stage", Value::str(&*stage_name)),
                                ("duration_ms", Value::Int(elapsed)),
                            ]),
                        )?;
                        self.value = v;
                        self.stage += 1;
                        self.next_stage(ctx)
                    }
                    Err(text) => self.stage_failed(ctx, text),
                }
            }
        }
    }

    fn intercepts_errors(&self) -> bool {
        self.state == State::Running
    }

    fn frame_name(&self) -> &str {
        &self.frame_name
    }

    fn child_parent(&self) -> Option<&tracing::Span> {
        self.stage_span.as_ref()
    }
}

/// `V` of `Result<V, E>`, else the type itself.
fn ok_type(ty: &str) -> &str {
    let ty = ty.trim();
    match ty.strip_prefix("Result<").and_then(|r| r.strip_suffix('>')) {
        Some(inner) => split_generics(inner).first().copied().unwrap_or(ty),
        None => ty,
    }
}

/// The top-level, comma-separated parts of a generic argument list.
fn split_generics(inner: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in inner.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(inner[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(inner[start..].trim());
    parts
}

/// Whether `v` is a value of type `ty`: `Some(false)` only for a clear mismatch, `None` when
/// the type is one this check does not know.
pub(crate) fn conforms(program: &concerto_ir::Program, v: &Value, ty: &str) -> Option<bool> {
    let ty = ty.trim();
    let (head, args) = match ty.find('<') {
        Some(open) if ty.ends_with('>') => (
            ty[..open].trim(),
            split_generics(&ty[open + 1..ty.len() - 1]),
        ),
        _ => (ty, Vec::new()),
    };
    let all = |items: Vec<Value>, elem: &str| -> Option<bool> {
        let mut known = true;
        for item in &items {
            match conforms(program, item, elem) {
                Some(false) => return Some(false),
                None => known = false,
                Some(true) => {}
            }
        }
        if known || items.is_empty() {
            Some(true)
        } else {
            None
        }
    };
    match (head, v) {
        ("any" | "Any" | "", _) => None,
        ("Int", Value::Int(_)) => Some(true),
        ("Float", Value::Float(_) | Value::Int(_)) => Some(true),
        ("String", Value::Str(_)) => Some(true),
        ("Bool", Value::Bool(_)) => Some(true),
        ("Nil" | "nil" | "()", Value::Nil) => Some(true),
        ("Range", Value::Range(_)) => Some(true),
        ("Array", Value::Array(a)) => match args.first() {
            Some(elem) => all(a.to_vec(), elem),
            None => Some(true),
        },
        ("Map", Value::Map(m)) => match args.get(1) {
            Some(elem) => all(m.entries().into_iter().map(|(_, v)| v).collect(), elem),
            None => Some(true),
        },
        ("Option", Value::None) => Some(true),
        ("Option", Value::Some(inner)) => match args.first() {
            Some(elem) => conforms(program, inner, elem),
            None => Some(true),
        },
        ("Result", Value::Ok(inner)) => match args.first() {
            Some(elem) => conforms(program, inner, elem),
            None => Some(true),
        },
        ("Result", Value::Err(inner)) => match args.get(1) {
            Some(elem) => conforms(program, inner, elem),
            None => Some(true),
        },
        (
            "Int" | "Float" | "String" | "Bool" | "Nil" | "Range" | "Array" | "Map" | "Option"
            | "Result",
            _,
        ) => Some(false),
        (name, Value::Struct(s))
            if program.schemas.iter().any(|x| x.name == name)
                || program.types.iter().any(|t| &*t.name == name) =>
        {
            Some(&*s.ty.name == name)
        }
        (name, Value::Enum(e)) if program.types.iter().any(|t| &*t.name == name) => {
            Some(&*e.type_name == name)
        }
        // A declared struct, enum or schema takes a value of that type only (a map with the
        // same fields is not one).
        (name, _)
            if program.schemas.iter().any(|x| x.name == name)
                || program.types.iter().any(|t| &*t.name == name) =>
        {
            Some(false)
        }
        _ => None,
    }
}
