//! The process-level services: [`System`] (console, environment, clock, randomness,
//! logging, spawning) with [`LogLevel`] and [`Spawned`].

use std::time::Duration;

use super::BoxFuture;

/// Severity of a `std::log` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// `debug`
    Debug,
    /// `info`
    Info,
    /// `warn`
    Warn,
    /// `error`
    Error,
}

/// The process-level services: console, environment, clock, randomness, logging.
pub trait System: Send + Sync {
    /// Writes `print`/`println` output.
    fn print(&self, text: &str);
    /// Writes a `std::log` message.
    fn log(&self, level: LogLevel, message: &str);
    /// Reads an environment variable.
    fn env_var(&self, name: &str) -> Option<String>;
    /// Every environment variable.
    fn env_vars(&self) -> Vec<(String, String)>;
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
    /// A monotonic instant for measuring durations.
    fn monotonic(&self) -> std::time::Instant {
        std::time::Instant::now()
    }
    /// Waits without blocking a thread.
    fn sleep(&self, duration: Duration) -> BoxFuture<()>;

    /// Starts `task` now on the host's executor (a spawned async task of the program) and
    /// returns its completion and a way to cancel it. The default has no executor and gives
    /// the task back: it then runs when it is first awaited.
    fn spawn(&self, task: BoxFuture<()>) -> Result<Spawned, BoxFuture<()>> {
        Err(task)
    }
    /// Fills `buf` with random bytes.
    fn random_bytes(&self, buf: &mut [u8]);
}

/// A task started by [`System::spawn`].
pub struct Spawned {
    /// Completes when the task has finished (or was cancelled).
    pub done: BoxFuture<()>,
    /// Cancels the task.
    pub abort: Box<dyn Fn() + Send + Sync>,
}
