//! Running many executions at once: [`Executor`], and the runtime-wide bound on agent calls
//! in flight ([`Bounded`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concerto_vm::host::{
    BoxFuture, ChatRequest, ChatResponse, ConnectionId, Connections, HostError, Program,
};
use concerto_vm::{ErrorKind, ExecConfig, Execution, Host, Vm, VmError};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::{Metrics, RuntimeError, Value};

/// A connection layer that lets at most `max` calls through at once; the others wait.
pub(crate) struct Bounded {
    inner: Arc<dyn Connections>,
    permits: Arc<Semaphore>,
}

impl Bounded {
    pub(crate) fn new(inner: Arc<dyn Connections>, max: usize) -> Bounded {
        Bounded {
            inner,
            permits: Arc::new(Semaphore::new(max.max(1))),
        }
    }
}

impl Connections for Bounded {
    fn chat(
        &self,
        program: &Arc<Program>,
        connection: ConnectionId,
        request: ChatRequest,
    ) -> BoxFuture<Result<ChatResponse, HostError>> {
        let permits = self.permits.clone();
        let inner = self.inner.clone();
        let program = program.clone();
        Box::pin(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .map_err(|_| HostError::failed("the agent call limiter was closed"))?;
            inner.chat(&program, connection, request).await
        })
    }
}

/// Runs executions of one loaded program, any number at once (a web service handling
/// requests, a batch of inputs): each has its own stack, frames and locals; all share the
/// immutable program, the connection layer (HTTP pools, rate and concurrency limits), the
/// memory store, the tool layer and the emit hub. Clone it freely; it is `Send + Sync`.
///
/// Get one from [`crate::Runtime::executor`]. Executions started here do not save persisted
/// hashmaps or flush batched emits on their own: call [`crate::Runtime::save_hashmaps`] /
/// [`crate::Runtime::flush_emits`] when a batch is done.
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

struct Inner {
    vm: Arc<Vm>,
    host: Host,
    config: ExecConfig,
    timeout: Duration,
    totals: Mutex<Metrics>,
    /// `RuntimeConfig::otlp_endpoint`: each execution's spans are flushed to it.
    otlp: Option<String>,
}

impl Executor {
    pub(crate) fn new(
        vm: Arc<Vm>,
        host: Host,
        config: ExecConfig,
        timeout: Duration,
        otlp: Option<String>,
    ) -> Self {
        Executor {
            inner: Arc::new(Inner {
                vm,
                host,
                config,
                timeout,
                totals: Mutex::new(Metrics::default()),
                otlp,
            }),
        }
    }

    /// Runs the program once (`main`), concurrently with any other execution.
    ///
    /// # Errors
    /// The uncaught runtime error, or the execution timeout.
    pub async fn execute(&self) -> Result<Value, RuntimeError> {
        self.execute_with_metrics().await.0
    }

    /// [`Executor::execute`], with this execution's own counters. Each execution has a
    /// `run` span, and with [`crate::RuntimeConfig::otlp_endpoint`] its spans reach the
    /// collector before it returns, as a [`crate::Runtime`] run's do.
    pub async fn execute_with_metrics(&self) -> (Result<Value, RuntimeError>, Metrics) {
        let inner = &self.inner;
        #[cfg(feature = "otel")]
        let export = match &inner.otlp {
            Some(endpoint) => match crate::otel::install_off_workers(endpoint.clone()).await {
                Ok(export) => Some(export),
                Err(e) => return (Err(e), Metrics::default()),
            },
            None => None,
        };
        #[cfg(not(feature = "otel"))]
        if inner.otlp.is_some() {
            let off = crate::SetupError::FeatureOff {
                feature: "otel",
                what: "RuntimeConfig::otlp_endpoint",
            };
            return (Err(off.into()), Metrics::default());
        }
        let (result, metrics) = traced(
            None,
            run_once(
                inner.vm.clone(),
                inner.host.clone(),
                inner.config.clone(),
                inner.timeout,
            ),
        )
        .await;
        #[cfg(feature = "otel")]
        crate::otel::flush_after_run(export).await;
        inner.totals.lock().merge(&metrics);
        (result, metrics)
    }

    /// Counters summed over every execution this executor (and its clones) ran; the wall
    /// time is that of the longest.
    pub fn metrics(&self) -> Metrics {
        self.inner.totals.lock().clone()
    }
}

/// The `run` span of one execution (`concerto.run_id` when the run has an id).
pub(crate) fn run_span(run_id: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!(
        target: concerto_vm::spans::TARGET,
        "run",
        concerto.run_id = tracing::field::Empty,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if let Some(id) = run_id {
        span.record("concerto.run_id", id);
    }
    span
}

/// An execution inside its `run` span (every agent call, tool call and task of the run is
/// under it), the span marked with the error's kind when the execution failed.
pub(crate) async fn traced(
    run_id: Option<&str>,
    execution: impl Future<Output = (Result<Value, RuntimeError>, Metrics)>,
) -> (Result<Value, RuntimeError>, Metrics) {
    let span = run_span(run_id);
    let (outcome, metrics) = tracing::Instrument::instrument(execution, span.clone()).await;
    if let Err(RuntimeError::Execution(err)) = &outcome {
        concerto_vm::spans::record_error(&span, err.kind().as_str());
    }
    (outcome, metrics)
}

/// One execution of `main` with the execution timeout; its value and counters.
pub(crate) async fn run_once(
    vm: Arc<Vm>,
    host: Host,
    config: ExecConfig,
    timeout: Duration,
) -> (Result<Value, RuntimeError>, Metrics) {
    let started = Instant::now();
    let mut exec = Execution::new(vm, host, config);
    let outcome = tokio::time::timeout(timeout, exec.run_main()).await;
    let stats = exec.stats();
    let metrics = Metrics {
        execution_time_ms: started.elapsed().as_millis() as u64,
        emit_count: stats.emits,
        errors: stats.errors_caught,
        agent_calls: stats.llm.by_agent.values().map(|c| c.requests).sum(),
        tool_calls: stats.tool_calls
            + stats
                .llm
                .by_agent
                .values()
                .map(|c| c.tool_calls)
                .sum::<u64>(),
        llm: stats.llm,
    };
    let result = match outcome {
        Ok(Ok(v)) => Ok(Value::from(&v)),
        Ok(Err(e)) => Err(RuntimeError::Execution(e)),
        Err(_) => Err(RuntimeError::Execution(VmError::new(
            ErrorKind::ExecutionTimeout,
            format!("execution timed out after {:.3} s", timeout.as_secs_f64()),
        ))),
    };
    (result, metrics)
}
