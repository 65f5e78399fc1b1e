//! Many machines: a pool of workers runs queued programs (Redis Streams, one consumer
//! group), and a dead worker's runs finish elsewhere.
//!
//! [`Queue`] submits runs ([`Queue::submit`]), follows their emits and end
//! ([`Queue::events`], [`watch()`]) and counts them ([`Queue::stats`]). A [`Worker`] takes runs
//! and executes each as a journaled, leased run ([`Runtime::execute_leased_run`](crate::Runtime::execute_leased_run)) in the
//! state store (the queue's Redis unless [`WorkerOptions::state`] names another), with a
//! runtime its [`RunFactory`] builds — so limits and permissions are the worker's, never the
//! submitter's. Each run's emits go to the run's stream, once each (keyed by their journal
//! position). The lease is renewed every third of [`WorkerOptions::lease`]; a run whose
//! worker stops renewing is claimed by another worker and resumed from its journal, and a
//! worker that was only paused finds its writes refused (fencing) and drops the run.
//!
//! The protocol (keys, scripts, states) is `concerto_store_redis::queue`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use concerto_emit::FlushSink;
use concerto_vm::Value as VmValue;
use concerto_vm::host::{BoxFuture, EmitSink, HostError, MemoryStore};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

pub use concerto_store_redis::queue::{
    Outcome, Queue, QueueAddress, QueueStats, RunEvent, RunInfo, RunState, Taken,
};

use crate::{Limits, RuntimeBuilder, RuntimeError, StateStore};

/// What a worker knows of a run when it builds the run's runtime.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The run's id.
    pub run: String,
    /// Which attempt this is (1 for the first; more after a lost lease).
    pub attempt: u64,
    /// The variables the submitter gave the run (the factory decides what the program may
    /// read of them: the worker's sandbox applies).
    pub env: Vec<(String, String)>,
}

/// Builds the runtime of one run: every limit, permission and component but the state
/// store and the emit sink, which the worker adds. It must not set a state or memory store.
pub type RunFactory =
    Arc<dyn Fn(&RunRequest) -> Result<RuntimeBuilder, RuntimeError> + Send + Sync>;

/// A worker's settings.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The worker's name (its consumer in the group); unique per worker process.
    pub name: String,
    /// Runs executed at once.
    pub concurrency: usize,
    /// A run whose worker has not renewed its lease for this long is claimed by another.
    pub lease: Duration,
    /// A run taken this many times (its lease lost each time) is dead-lettered at the next.
    pub max_attempts: u64,
    /// How long a finished run's result and emits are kept.
    pub keep_results: Duration,
    /// On shutdown, how long running runs may take to finish before they are handed back.
    pub shutdown_grace: Duration,
    /// The state store of the runs' journals, hashmaps, ledgers and memories (`None`: the
    /// queue's Redis server).
    pub state: Option<StateStore>,
}

impl WorkerOptions {
    /// Defaults: concurrency 4, lease 10 s, 3 attempts, results kept 7 days, 30 s grace.
    pub fn new(name: impl Into<String>) -> WorkerOptions {
        WorkerOptions {
            name: name.into(),
            concurrency: 4,
            lease: Duration::from_secs(10),
            max_attempts: 3,
            keep_results: Duration::from_secs(7 * 24 * 3600),
            shutdown_grace: Duration::from_secs(30),
            state: None,
        }
    }
}

/// What a worker did ([`Worker::run_until`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Runs it took (claimed ones included).
    pub taken: u64,
    /// Runs it recorded as done.
    pub done: u64,
    /// Runs it recorded as failed.
    pub failed: u64,
    /// Runs it lost to another worker (its lease moved on).
    pub lost: u64,
    /// Runs it handed back at shutdown.
    pub handed_back: u64,
    /// Runs it left to be retried (the run could not be executed, e.g. its store failed).
    pub left: u64,
}

/// Where a worker reports problems that do not stop it ([`Worker::on_warning`]).
type WarningLog = Arc<dyn Fn(&str) + Send + Sync>;

/// A worker: takes runs from a queue and executes them (see the [module](self)).
pub struct Worker {
    queue: Queue,
    options: WorkerOptions,
    state: StateStore,
    factory: RunFactory,
    /// Programs by hash: the IR and the opened state store.
    programs: tokio::sync::Mutex<HashMap<String, Arc<Loaded>>>,
    report: Mutex<WorkerReport>,
    log: Option<WarningLog>,
}

struct Loaded {
    ir: Vec<u8>,
    store: Arc<dyn MemoryStore>,
}

/// How one run ended, for the worker.
enum Ended {
    Finished(Outcome),
    Lost,
    Left(String),
}

impl Worker {
    /// A worker on the queue at `address`.
    ///
    /// # Errors
    /// The queue cannot be reached; bad options.
    pub async fn connect(
        address: &str,
        options: WorkerOptions,
        factory: RunFactory,
    ) -> Result<Worker, RuntimeError> {
        if options.concurrency == 0 || options.lease.is_zero() || options.max_attempts == 0 {
            return Err(HostError::failed(
                "a worker needs a concurrency, a lease and a number of attempts above zero",
            )
            .into());
        }
        let queue = Queue::connect(address).await?;
        let state = match &options.state {
            Some(state) => state.clone(),
            None => StateStore::Redis(QueueAddress::parse(address).map_err(HostError::failed)?.url),
        };
        Ok(Worker {
            queue,
            options,
            state,
            factory,
            programs: tokio::sync::Mutex::new(HashMap::new()),
            report: Mutex::new(WorkerReport::default()),
            log: None,
        })
    }

    /// The queue it takes runs from.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Takes and executes runs until `shutdown` completes, then stops taking runs, lets the
    /// running ones finish within [`WorkerOptions::shutdown_grace`] and hands the rest back
    /// (another worker resumes them from their journals). Needs a tokio runtime with timers
    /// and I/O; runs are spawned on it.
    ///
    /// # Errors
    /// The queue failed for longer than its connection retries.
    pub async fn run_until(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<WorkerReport, RuntimeError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut running: HashMap<String, (Taken, tokio::task::JoinHandle<()>)> = HashMap::new();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
        let poll = Duration::from_millis(500).min(self.options.lease / 2);
        let mut stopping = false;
        while !stopping {
            while let Ok(run) = done_rx.try_recv() {
                running.remove(&run);
            }
            let free = self.options.concurrency.saturating_sub(running.len());
            if free == 0 {
                tokio::select! {
                    () = &mut shutdown => stopping = true,
                    Some(run) = done_rx.recv() => { running.remove(&run); }
                }
                continue;
            }
            let take = self.queue.take(
                &self.options.name,
                free,
                self.options.lease,
                self.options.max_attempts,
                poll,
                self.options.keep_results,
            );
            let taken = tokio::select! {
                () = &mut shutdown => { stopping = true; continue; }
                taken = take => taken,
            };
            let taken = match taken {
                Ok(taken) => taken,
                Err(e) => {
                    self.warn(&format!("worker {}: {e}", self.options.name));
                    tokio::select! {
                        () = &mut shutdown => stopping = true,
                        () = tokio::time::sleep(poll) => {}
                    }
                    continue;
                }
            };
            for t in taken {
                self.report.lock().taken += 1;
                let worker = self.clone();
                let done = done_tx.clone();
                let run = t.run.clone();
                let held = t.clone();
                let handle = tokio::spawn(async move {
                    worker.hold(held).await;
                    let _ = done.send(run);
                });
                running.insert(t.run.clone(), (t, handle));
            }
        }
        // Shutdown: let the running runs finish within the grace period, then hand back.
        let deadline = tokio::time::Instant::now() + self.options.shutdown_grace;
        while !running.is_empty() {
            match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some(run)) => {
                    running.remove(&run);
                }
                Ok(None) | Err(_) => break,
            }
        }
        for (_, (taken, handle)) in running {
            handle.abort();
            let _ = handle.await;
            if self.queue.hand_back(&taken).await.unwrap_or(false) {
                self.report.lock().handed_back += 1;
            }
        }
        Ok(self.report.lock().clone())
    }

    /// Holds one run: renews its lease while executing it, then records how it ended.
    async fn hold(&self, taken: Taken) {
        let (lost_tx, mut lost_rx) = watch::channel(false);
        let renew_every = self.options.lease / 3;
        let renewing = {
            let queue = self.queue.clone();
            let taken = taken.clone();
            let name = self.options.name.clone();
            async move {
                loop {
                    tokio::time::sleep(renew_every).await;
                    // A failed renewal (the server away for a moment) is tried again; a
                    // refused one means another worker holds the run.
                    if let Ok(false) = queue.renew(&taken, &name).await {
                        let _ = lost_tx.send(true);
                        return;
                    }
                }
            }
        };
        let renewing = tokio::spawn(renewing);
        let ended = tokio::select! {
            ended = self.execute(&taken) => ended,
            _ = lost_rx.wait_for(|lost| *lost) => Ended::Lost,
        };
        renewing.abort();
        let ended = match ended {
            // An error may be the lease moving on (a refused write): the queue decides.
            Ended::Finished(Outcome::Failed(e)) | Ended::Left(e)
                if !self
                    .queue
                    .renew(&taken, &self.options.name)
                    .await
                    .unwrap_or(true) =>
            {
                let _ = e;
                Ended::Lost
            }
            other => other,
        };
        match ended {
            Ended::Finished(outcome) => {
                let recorded = self
                    .queue
                    .finish(&taken, &outcome, self.options.keep_results)
                    .await;
                match (recorded, outcome) {
                    (Ok(true), Outcome::Done(_)) => self.report.lock().done += 1,
                    (Ok(true), Outcome::Failed(_)) => self.report.lock().failed += 1,
                    (Ok(false), _) => self.report.lock().lost += 1,
                    (Err(e), _) => {
                        self.warn(&format!("run {}: its end was not recorded: {e}", taken.run));
                        self.report.lock().left += 1;
                    }
                }
            }
            Ended::Lost => self.report.lock().lost += 1,
            Ended::Left(why) => {
                self.warn(&format!(
                    "run {} (attempt {}) left for another attempt: {why}",
                    taken.run, taken.attempt
                ));
                self.report.lock().left += 1;
            }
        }
    }

    /// Reports a problem that does not stop the worker.
    fn warn(&self, message: &str) {
        if let Some(log) = &self.log {
            log(message);
        }
    }

    /// Calls `log` with each problem that does not stop the worker (a queue operation that
    /// failed and is tried again, a run left for another attempt).
    pub fn on_warning(mut self, log: impl Fn(&str) + Send + Sync + 'static) -> Worker {
        self.log = Some(Arc::new(log));
        self
    }

    /// Executes one run to its end.
    async fn execute(&self, taken: &Taken) -> Ended {
        let loaded = match self.load(&taken.program).await {
            Ok(loaded) => loaded,
            Err(RuntimeError::Load(e)) => {
                return Ended::Finished(Outcome::Failed(format!("failed to load IR: {e}")));
            }
            Err(e) => return Ended::Left(e.to_string()),
        };
        let request = RunRequest {
            run: taken.run.clone(),
            attempt: taken.attempt,
            env: taken.env.clone(),
        };
        let sink = Arc::new(RunSink::new(self.queue.clone(), taken));
        let built = (self.factory)(&request).and_then(|builder| {
            builder
                .memory_store(loaded.store.clone())
                .emit_sink(sink.clone())
                .build()
        });
        let mut runtime = match built {
            Ok(runtime) => runtime,
            // The worker's settings refuse the run (a variable it may not set, …): running
            // it again would be refused again.
            Err(e) => {
                return Ended::Finished(Outcome::Failed(format!(
                    "the worker refuses the run: {e}"
                )));
            }
        };
        if let Err(e) = runtime.load_ir_bytes(&loaded.ir) {
            return Ended::Finished(Outcome::Failed(e.to_string()));
        }
        let result = runtime.execute_leased_run(&taken.run, taken.epoch).await;
        runtime.shutdown().await;
        // Every emit is in the run's stream before its end is.
        let appended = sink.drained().await;
        match (result, appended) {
            (_, Err(e)) => Ended::Left(format!("an emit was not appended: {e}")),
            (Ok(value), Ok(())) => Ended::Finished(Outcome::Done(value.to_json())),
            (Err(RuntimeError::Execution(e)), Ok(())) => {
                let mut text = e.message().to_string();
                if let Some(location) = e.location() {
                    text.push_str(&format!(" (in {location})"));
                }
                Ended::Finished(Outcome::Failed(text))
            }
            (Err(RuntimeError::Load(e)), Ok(())) => {
                Ended::Finished(Outcome::Failed(format!("failed to load IR: {e}")))
            }
            (Err(e), Ok(())) => Ended::Left(e.to_string()),
        }
    }

    /// The program `hash`: its IR, fetched once, and its state store, opened once.
    async fn load(&self, hash: &str) -> Result<Arc<Loaded>, RuntimeError> {
        let mut programs = self.programs.lock().await;
        if let Some(loaded) = programs.get(hash) {
            return Ok(loaded.clone());
        }
        let ir = self.queue.program(hash).await?;
        let program = concerto_ir::load_bytes(&ir)?;
        let state = self.state.clone();
        let store = tokio::task::spawn_blocking(move || {
            crate::open_state_store(&state, &program, &Limits::default())
        })
        .await
        .map_err(|e| HostError::failed(format!("opening the state store: {e}")))??;
        let loaded = Arc::new(Loaded { ir, store });
        programs.insert(hash.to_string(), loaded.clone());
        Ok(loaded)
    }
}

/// The emit sink of one leased run: emits go to the run's stream in order, each once (by
/// its journal key), under the lease's epoch. `emit` queues; the emit barrier
/// ([`EmitSink::settle`]) waits until everything queued is appended, so the journal records
/// an emit only after it is in the stream.
struct RunSink {
    queue_tx: mpsc::UnboundedSender<(Option<String>, String, String)>,
    /// Emits queued so far.
    queued: Mutex<u64>,
    /// Emits appended so far, or the first failure.
    appended: watch::Receiver<Result<u64, HostError>>,
}

impl RunSink {
    fn new(queue: Queue, taken: &Taken) -> RunSink {
        let (queue_tx, mut rx) = mpsc::unbounded_channel::<(Option<String>, String, String)>();
        let (tx, appended) = watch::channel(Ok(0));
        let run = taken.run.clone();
        let epoch = taken.epoch;
        tokio::spawn(async move {
            let mut count = 0;
            while let Some((key, channel, payload)) = rx.recv().await {
                match queue
                    .emit(&run, epoch, key.as_deref(), &channel, &payload)
                    .await
                {
                    Ok(()) => {
                        count += 1;
                        let _ = tx.send(Ok(count));
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        RunSink {
            queue_tx,
            queued: Mutex::new(0),
            appended,
        }
    }

    fn push(&self, key: Option<&str>, channel: &str, payload: &VmValue) -> Result<(), HostError> {
        if let Err(e) = &*self.appended.borrow() {
            return Err(e.clone());
        }
        let mut queued = self.queued.lock();
        self.queue_tx
            .send((
                key.map(str::to_string),
                channel.to_string(),
                payload.to_json().to_string(),
            ))
            .map_err(|_| HostError::failed("the run's emit stream is closed"))?;
        *queued += 1;
        Ok(())
    }

    /// Waits until every emit queued so far is appended.
    fn wait(&self) -> BoxFuture<Result<(), HostError>> {
        let target = *self.queued.lock();
        let mut appended = self.appended.clone();
        Box::pin(async move {
            let seen = appended
                .wait_for(|a| a.as_ref().map_or(true, |n| *n >= target))
                .await
                .map_err(|_| HostError::failed("the run's emit stream is closed"))?;
            match &*seen {
                Ok(_) => Ok(()),
                Err(e) => Err(e.clone()),
            }
        })
    }

    async fn drained(&self) -> Result<(), HostError> {
        self.wait().await
    }
}

impl EmitSink for RunSink {
    fn emit(&self, channel: &str, payload: &VmValue) -> Result<(), HostError> {
        self.push(None, channel, payload)
    }

    fn emit_keyed(&self, key: &str, channel: &str, payload: &VmValue) -> Result<(), HostError> {
        self.push(Some(key), channel, payload)
    }

    fn settles(&self) -> bool {
        true
    }

    fn settle(&self) -> Option<BoxFuture<Result<(), HostError>>> {
        Some(self.wait())
    }
}

impl FlushSink for RunSink {
    fn flush(&self) -> Result<(), HostError> {
        Ok(())
    }
}

/// Follows run `run` from its first event: calls `on_event` for each, in order, and returns
/// the run's end (waits as long as the run takes).
///
/// # Errors
/// The queue's; an unknown run (or one whose record expired).
pub async fn watch(
    queue: &Queue,
    run: &str,
    mut on_event: impl FnMut(&RunEvent),
) -> Result<RunEvent, RuntimeError> {
    if queue.run_info(run).await?.is_none() {
        return Err(HostError::failed(format!(
            "queue `{}`: no run `{run}` (unknown, or its result has expired)",
            queue.name()
        ))
        .into());
    }
    let mut after = "0".to_string();
    loop {
        for (id, event) in queue.events(run, &after, Duration::from_secs(5)).await? {
            after = id;
            on_event(&event);
            if let RunEvent::End { .. } = event {
                return Ok(event);
            }
        }
        if queue.run_info(run).await?.is_none() {
            return Err(HostError::failed(format!(
                "queue `{}`: run `{run}` expired while watched",
                queue.name()
            ))
            .into());
        }
    }
}
