//! The SQLite thread: one connection, a queue of jobs, group commit.
//!
//! Every job runs inside a transaction and its result is sent to the waiting task only after
//! that transaction has committed, so an acknowledged write is in the database file (and,
//! with `synchronous=FULL`, on stable storage). Jobs that queued up while the previous
//! transaction was committing run together in one transaction (group commit), each inside
//! its own savepoint: a job that fails rolls back to its savepoint, so it changes nothing
//! while the others still commit.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use concerto_vm::host::{BoxFuture, HostError, HostErrorKind};
use rusqlite::{Connection, ErrorCode};
use tokio::sync::oneshot;

/// The most jobs committed by one transaction.
const MAX_BATCH: usize = 64;

/// The connection and what messages need to name.
pub(crate) struct Db {
    pub(crate) conn: Connection,
    pub(crate) path: PathBuf,
}

impl Db {
    /// A failed SQLite call, naming the file and what was being done. A busy database (a
    /// writer in another process held its lock past the busy timeout) is a timeout.
    pub(crate) fn fail(&self, what: &str, err: rusqlite::Error) -> HostError {
        failure(&self.path, what, err)
    }

    fn exec(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    }
}

/// A failed SQLite call on the database at `path`.
pub(crate) fn failure(path: &Path, what: &str, err: rusqlite::Error) -> HostError {
    let kind = match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => HostErrorKind::Timeout,
        _ => HostErrorKind::Failed,
    };
    HostError {
        kind,
        message: format!("SQLite store {}: {what}: {err}", path.display()),
        provider: None,
    }
}

/// One operation waiting for the SQLite thread.
trait Task: Send {
    /// Whether the operation writes (then its transaction takes the write lock up front).
    fn writes(&self) -> bool;
    /// Runs the operation inside the open transaction; whether it succeeded.
    fn run(&mut self, db: &Db) -> bool;
    /// Sends the outcome to the waiting task: the operation's own result, or `failure` (the
    /// transaction could not start or commit) in place of a success or of a result that
    /// never came.
    fn finish(self: Box<Self>, failure: Option<&HostError>);
}

struct Call<T, F> {
    writes: bool,
    op: Option<F>,
    result: Option<Result<T, HostError>>,
    reply: oneshot::Sender<Result<T, HostError>>,
}

impl<T, F> Task for Call<T, F>
where
    T: Send,
    F: FnOnce(&Db) -> Result<T, HostError> + Send,
{
    fn writes(&self) -> bool {
        self.writes
    }

    fn run(&mut self, db: &Db) -> bool {
        let Some(op) = self.op.take() else {
            return false;
        };
        let result = op(db);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, failure: Option<&HostError>) {
        let outcome = match (self.result, failure) {
            (Some(Err(own)), _) => Err(own),
            (_, Some(failure)) => Err(failure.clone()),
            (Some(Ok(value)), None) => Ok(value),
            (None, None) => Err(HostError::failed(
                "the SQLite store dropped an operation without running it",
            )),
        };
        // The waiting task may have been cancelled; the outcome then has no reader.
        let _ = self.reply.send(outcome);
    }
}

type Job = Box<dyn Task>;

/// Counters of the SQLite thread.
#[derive(Default)]
pub(crate) struct Counters {
    /// Operations run.
    pub(crate) operations: AtomicU64,
    /// Transactions committed (a group commit runs several operations in one).
    pub(crate) commits: AtomicU64,
}

/// The handle to the SQLite thread. Dropping it lets the thread finish the queued jobs,
/// close the connection and exit, and waits for that.
pub(crate) struct Worker {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// What a call says when the thread is gone.
    stopped: Arc<str>,
    counters: Arc<Counters>,
}

impl Worker {
    /// Starts the thread that owns `db`.
    pub(crate) fn start(db: Db) -> Result<Worker, HostError> {
        let path = db.path.clone();
        let (tx, rx) = mpsc::channel::<Job>();
        let counters = Arc::new(Counters::default());
        let shared = counters.clone();
        let thread = std::thread::Builder::new()
            .name("concerto-sqlite".into())
            .spawn(move || serve(db, rx, &shared))
            .map_err(|e| {
                HostError::failed(format!(
                    "SQLite store {}: cannot start its thread: {e}",
                    path.display()
                ))
            })?;
        Ok(Worker {
            jobs: Some(tx),
            thread: Some(thread),
            stopped: Arc::from(format!(
                "SQLite store {}: its thread has stopped, so the operation did not run",
                path.display()
            )),
            counters,
        })
    }

    /// (operations run, transactions committed) so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.counters.operations.load(Ordering::Relaxed),
            self.counters.commits.load(Ordering::Relaxed),
        )
    }

    /// Queues `op`; the future resolves once its transaction has committed (or failed).
    pub(crate) fn call<T, F>(&self, writes: bool, op: F) -> BoxFuture<Result<T, HostError>>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, HostError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(Call {
            writes,
            op: Some(op),
            result: None,
            reply,
        });
        let sent = match &self.jobs {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        let stopped = self.stopped.clone();
        Box::pin(async move {
            if !sent {
                return Err(HostError::failed(&*stopped));
            }
            match answer.await {
                Ok(outcome) => outcome,
                Err(_) => Err(HostError::failed(&*stopped)),
            }
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop once the queued jobs are done.
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread's loop: take every queued job (up to [`MAX_BATCH`]) and run them in one
/// transaction, until the store is dropped.
fn serve(db: Db, jobs: mpsc::Receiver<Job>, counters: &Counters) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        counters
            .operations
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        if run_batch(&db, batch) {
            counters.commits.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Runs a batch; whether a transaction committed.
fn run_batch(db: &Db, mut batch: Vec<Job>) -> bool {
    if !db.conn.is_autocommit() {
        // A rollback that failed earlier left a transaction open; end it before the next.
        let _ = db.exec("ROLLBACK");
    }
    let writes = batch.iter().any(|job| job.writes());
    // A writing transaction takes the write lock at once (waiting up to the busy timeout
    // for another process): a deferred one that read first could not upgrade later.
    let begin = if writes {
        "BEGIN IMMEDIATE"
    } else {
        "BEGIN DEFERRED"
    };
    if let Err(e) = db.exec(begin) {
        let failure = db.fail("cannot start a transaction", e);
        finish_all(batch, Some(&failure));
        return false;
    }
    if let [job] = batch.as_mut_slice() {
        if job.run(db) {
            return commit(db, batch);
        }
        // The job's own error is its outcome; nothing it did stays.
        let _ = db.exec("ROLLBACK");
        finish_all(batch, None);
        return false;
    }
    for job in &mut batch {
        if let Err(e) = db.exec("SAVEPOINT job") {
            let failure = db.fail("cannot start a savepoint", e);
            let _ = db.exec("ROLLBACK");
            finish_all(batch, Some(&failure));
            return false;
        }
        let ok = job.run(db);
        let undone = if ok {
            Ok(())
        } else {
            db.exec("ROLLBACK TO job")
        };
        if let Err(e) = undone.and_then(|()| db.exec("RELEASE job")) {
            let failure = db.fail("cannot end a savepoint", e);
            let _ = db.exec("ROLLBACK");
            finish_all(batch, Some(&failure));
            return false;
        }
    }
    commit(db, batch)
}

/// Commits, then answers every job; whether the commit succeeded.
fn commit(db: &Db, batch: Vec<Job>) -> bool {
    match db.exec("COMMIT") {
        Ok(()) => {
            finish_all(batch, None);
            true
        }
        Err(e) => {
            let failure = db.fail(
                "the transaction could not be committed, nothing was saved",
                e,
            );
            let _ = db.exec("ROLLBACK");
            finish_all(batch, Some(&failure));
            false
        }
    }
}

fn finish_all(batch: Vec<Job>, failure: Option<&HostError>) {
    for job in batch {
        job.finish(failure);
    }
}
