//! Asynchronous tasks: `SPAWN_ASYNC`, `AWAIT`, `AWAIT_ALL` and the `AWAIT_ANY` extension.
//!
//! `concertoc` 1a8ede9 runs `async fn` calls synchronously and never emits `SPAWN_ASYNC` or
//! `AWAIT_ALL`; the IR specification defines them, and the language's parallel await,
//! `parallel for` and `race` lower to them. This module implements them for IR that carries
//! them:
//!
//! - `SPAWN_ASYNC` pops a function (a function value, or a function's name as closures
//!   appear in concertoc's IR) and pushes a *task*: the function runs in a child execution
//!   (its own stack and frames, the program's globals as they are now, the same host: store,
//!   connections, emits) started at once on the host's executor ([`System::spawn`]); a host
//!   without one starts it at the first await. Tasks are bounded by what they call: the
//!   connection layer's concurrency and rate limits apply to all of them together.
//! - `AWAIT` on a task waits for its result (an error raised by the task is raised here, and
//!   is catchable); on an array whose items are tasks it waits for all of them, keeping input
//!   order (`parallel for`). Other values pass through.
//! - `AWAIT_ALL count` waits for `count` values at once and pushes the array of results in
//!   input order; the first error cancels the others and is raised.
//! - `AWAIT_ANY count` (an extension for `race`) pushes the result of the first task to
//!   finish and cancels the others.
//! - Each of the three accepts an integer `arg`: a timeout in milliseconds; when it expires
//!   the tasks still running are cancelled and a catchable `timeout` error is raised.
//!
//! Usage counters (LLM calls, tokens, emits, caught errors) of child executions are added to
//! the parent's when they finish, whether or not they are awaited.
//!
//! [`System::spawn`]: crate::host::System::spawn

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::{ErrorKind, VmError};
use crate::exec::{ExecStats, Execution};
use crate::host::{BoxFuture, Spawned, System};
use crate::value::{NativeObject, Object, Value};

/// The outcome of a task, shared between the task and whoever awaits it.
enum Slot {
    /// Not started: the host has no executor; the first await drives it.
    Lazy(BoxFuture<()>),
    /// Running on the host's executor (or being driven by an await).
    Running,
    /// Finished.
    Done(Result<Value, VmError>),
}

struct Shared {
    slot: Mutex<Slot>,
    /// Completes when the host's executor has finished the task (taken by one awaiter).
    done: Mutex<Option<BoxFuture<()>>>,
    /// Stops the task on the host's executor.
    abort: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    /// Set when the task was cancelled (a lost race, a timeout, an error in `AWAIT_ALL`).
    cancelled: std::sync::atomic::AtomicBool,
}

/// A task value (`typeof` is `Task`).
pub(crate) struct Task {
    shared: Arc<Shared>,
    label: String,
}

impl NativeObject for Task {
    fn type_name(&self) -> &str {
        "Task"
    }
    fn display(&self) -> String {
        format!("<task {}>", self.label)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Counters of finished child executions, added to the parent's statistics.
pub(crate) type ChildStats = Arc<Mutex<ExecStats>>;

/// Starts `exec` calling `func` as a task.
pub(crate) fn spawn(
    mut exec: Execution,
    func: concerto_ir::FuncId,
    label: String,
    system: &Arc<dyn System>,
    child_stats: ChildStats,
) -> Value {
    let shared = Arc::new(Shared {
        slot: Mutex::new(Slot::Running),
        done: Mutex::new(None),
        abort: Mutex::new(None),
        cancelled: std::sync::atomic::AtomicBool::new(false),
    });
    let done = shared.clone();
    // The task's spans (its agent calls) are children of the span current where it was
    // spawned.
    let span = crate::spans::task(&label);
    let body: BoxFuture<()> = Box::pin(tracing::Instrument::instrument(
        async move {
            let result = exec.call(func, Vec::new()).await;
            child_stats.lock().merge(&exec.own_stats());
            *done.slot.lock() = Slot::Done(result);
        },
        span,
    ));
    match system.spawn(body) {
        Ok(Spawned { done, abort }) => {
            *shared.done.lock() = Some(done);
            *shared.abort.lock() = Some(abort);
        }
        Err(body) => *shared.slot.lock() = Slot::Lazy(body),
    }
    Value::Object(Object::new(Task { shared, label }))
}

/// The task behind a value, if it is one.
fn task_of(v: &Value) -> Option<Arc<Shared>> {
    match v {
        Value::Object(obj) => obj.downcast::<Task>().map(|t| t.shared.clone()),
        _ => None,
    }
}

/// Cancels a task: the host stops it; its result becomes a `cancelled` error.
fn cancel(shared: &Shared) {
    shared
        .cancelled
        .store(true, std::sync::atomic::Ordering::SeqCst);
    if let Some(abort) = shared.abort.lock().take() {
        abort();
    }
    let mut slot = shared.slot.lock();
    if !matches!(*slot, Slot::Done(_)) {
        *slot = Slot::Done(Err(VmError::new(
            ErrorKind::Cancelled,
            "the task was cancelled",
        )));
    }
}

/// Waits for one task's result.
fn wait(shared: Arc<Shared>, system: Arc<dyn System>) -> BoxFuture<Result<Value, VmError>> {
    Box::pin(async move {
        loop {
            let lazy = {
                let mut slot = shared.slot.lock();
                match &mut *slot {
                    Slot::Done(r) => return r.clone(),
                    Slot::Lazy(_) => match std::mem::replace(&mut *slot, Slot::Running) {
                        Slot::Lazy(body) => Some(body),
                        _ => None,
                    },
                    Slot::Running => None,
                }
            };
            if let Some(body) = lazy {
                body.await;
                continue;
            }
            let done = shared.done.lock().take();
            match done {
                Some(done) => {
                    done.await;
                    // The host's task is over: a result must be there now (a task that
                    // panicked or was stopped by the host has none).
                    let mut slot = shared.slot.lock();
                    if !matches!(*slot, Slot::Done(_)) {
                        *slot = Slot::Done(Err(VmError::new(
                            ErrorKind::Internal,
                            "the task ended without a result (it panicked or the host stopped it)",
                        )));
                    }
                }
                // Someone else holds the completion future (another execution awaits the
                // same task): check back shortly.
                None => system.sleep(Duration::from_millis(1)).await,
            }
            if shared.cancelled.load(std::sync::atomic::Ordering::SeqCst) {
                let mut slot = shared.slot.lock();
                if !matches!(*slot, Slot::Done(_)) {
                    *slot = Slot::Done(Err(VmError::new(
                        ErrorKind::Cancelled,
                        "the task was cancelled",
                    )));
                }
            }
        }
    })
}

/// How a group of values is awaited.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Every result, in input order.
    All,
    /// The first result; the rest are cancelled.
    Any,
}

/// `AWAIT`: `Some(future)` when `v` is a task or an array holding tasks.
pub(crate) fn await_value(
    v: &Value,
    timeout: Option<Duration>,
    system: &Arc<dyn System>,
) -> Option<BoxFuture<Result<Value, VmError>>> {
    if let Some(shared) = task_of(v) {
        return Some(with_timeout(
            vec![shared.clone()],
            wait(shared, system.clone()),
            timeout,
            system,
        ));
    }
    if let Value::Array(a) = v {
        let items = a.to_vec();
        if items.iter().any(|i| task_of(i).is_some()) {
            return await_many(items, Mode::All, timeout, system).err();
        }
    }
    None
}

/// `AWAIT_ALL` / `AWAIT_ANY`: the value at once when nothing is pending.
pub(crate) fn await_many(
    items: Vec<Value>,
    mode: Mode,
    timeout: Option<Duration>,
    system: &Arc<dyn System>,
) -> Result<Value, BoxFuture<Result<Value, VmError>>> {
    let tasks: Vec<Option<Arc<Shared>>> = items.iter().map(task_of).collect();
    if tasks.iter().all(Option::is_none) {
        return match mode {
            Mode::All => Ok(Value::array(items)),
            Mode::Any => Ok(items.into_iter().next().unwrap_or(Value::Nil)),
        };
    }
    if mode == Mode::Any
        && let Some(ready) = tasks.iter().position(Option::is_none)
    {
        // A plain value is already finished: it wins the race.
        for t in tasks.iter().flatten() {
            cancel(t);
        }
        return Ok(items.into_iter().nth(ready).unwrap_or(Value::Nil));
    }
    let all: Vec<Arc<Shared>> = tasks.iter().flatten().cloned().collect();
    let futures: Vec<BoxFuture<Result<Value, VmError>>> = items
        .into_iter()
        .zip(&tasks)
        .map(|(item, task)| match task {
            Some(shared) => wait(shared.clone(), system.clone()),
            None => Box::pin(async move { Ok(item) }) as BoxFuture<_>,
        })
        .collect();
    let group = Group {
        futures: futures.into_iter().map(Some).collect(),
        results: Vec::new(),
        mode,
        tasks: all.clone(),
    };
    Err(with_timeout(all, Box::pin(group), timeout, system))
}

/// Polls several futures together (no executor needed: they advance whenever this is
/// polled, and the host's spawned tasks advance on their own).
struct Group {
    futures: Vec<Option<BoxFuture<Result<Value, VmError>>>>,
    results: Vec<Option<Value>>,
    mode: Mode,
    tasks: Vec<Arc<Shared>>,
}

impl Future for Group {
    type Output = Result<Value, VmError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if this.results.len() != this.futures.len() {
            this.results = (0..this.futures.len()).map(|_| None).collect();
        }
        for i in 0..this.futures.len() {
            let Some(fut) = this.futures[i].as_mut() else {
                continue;
            };
            if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                this.futures[i] = None;
                match (r, this.mode) {
                    (Ok(v), Mode::All) => this.results[i] = Some(v),
                    (result, _) => {
                        // First result of a race, or the first error of an await-all:
                        // the others are cancelled.
                        for t in &this.tasks {
                            cancel(t);
                        }
                        this.futures.clear();
                        return Poll::Ready(result);
                    }
                }
            }
        }
        if this.futures.iter().all(Option::is_none) {
            let values = this
                .results
                .iter_mut()
                .map(|r| r.take().unwrap_or(Value::Nil))
                .collect();
            return Poll::Ready(Ok(Value::array(values)));
        }
        Poll::Pending
    }
}

/// `fut`, or a catchable timeout error after `timeout` (cancelling `tasks`).
fn with_timeout(
    tasks: Vec<Arc<Shared>>,
    fut: BoxFuture<Result<Value, VmError>>,
    timeout: Option<Duration>,
    system: &Arc<dyn System>,
) -> BoxFuture<Result<Value, VmError>> {
    let Some(limit) = timeout else {
        return fut;
    };
    let sleep = system.sleep(limit);
    Box::pin(Timed {
        fut,
        sleep,
        tasks,
        limit,
    })
}

struct Timed {
    fut: BoxFuture<Result<Value, VmError>>,
    sleep: BoxFuture<()>,
    tasks: Vec<Arc<Shared>>,
    limit: Duration,
}

impl Future for Timed {
    type Output = Result<Value, VmError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(r) = self.fut.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            for t in &self.tasks {
                cancel(t);
            }
            return Poll::Ready(Err(VmError::new(
                ErrorKind::Timeout,
                format!(
                    "timeout: the awaited task did not finish within {} ms and was cancelled",
                    self.limit.as_millis()
                ),
            )));
        }
        Poll::Pending
    }
}
