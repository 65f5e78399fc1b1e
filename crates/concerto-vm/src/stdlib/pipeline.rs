//! `Pipeline.run(input)`: runs the stages in order with their lifecycle emits, retries and
//! timeouts, as a native continuation (stages are ordinary Concerto frames).
//!
//! Emits: `pipeline:start {name, stages}`, then per stage `pipeline:stage_start
//! {pipeline, stage}` and `pipeline:stage_complete {pipeline, stage, duration_ms}`, finally
//! `pipeline:complete {name, duration_ms}`. A stage fails when it returns `Err(e)` or raises a
//! runtime error; after its `@retry` attempts the run emits `pipeline:error {pipeline, stage,
//! error}` and returns `Err("pipeline 'P' failed at stage 's': <error>")`.

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
        let name = ctx.program().pipelines[pipeline as usize].name.to_string();
        PipelineRun {
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
        Ok(Step::Call(func, args))
    }

    fn next_stage(&mut self, ctx: &mut Ctx) -> Result<Step, VmError> {
        let stages = ctx.program().pipelines[self.pipeline as usize].stages.len();
        if self.stage >= stages {
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

    fn stage_failed(&mut self, ctx: &mut Ctx, error: String) -> Result<Step, VmError> {
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
}
