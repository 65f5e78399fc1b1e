//! [`ProcessSystem`]: the default console, environment, clock and randomness.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use concerto_vm::host::{BoxFuture, LogLevel, System};

/// Where a stream of text goes.
pub type TextOut = Arc<dyn Fn(&str) + Send + Sync>;

/// Console, environment, clock and randomness of this process.
///
/// `print`/`println` output goes to `print` (stdout by default) and `std::log` lines to
/// `log` (stderr by default); hosts hand their own writers with [`ProcessSystem::with_output`].
pub struct ProcessSystem {
    print: TextOut,
    log: TextOut,
    /// Variables that take precedence over the process environment (`--env FILE`).
    overlay: Vec<(String, String)>,
}

impl Default for ProcessSystem {
    fn default() -> Self {
        ProcessSystem::with_output(stdout_writer(), stderr_writer())
    }
}

/// A writer to this process's stdout (flushed per call).
pub fn stdout_writer() -> TextOut {
    Arc::new(|text: &str| {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    })
}

/// A writer to this process's stderr.
pub fn stderr_writer() -> TextOut {
    Arc::new(|text: &str| {
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    })
}

impl ProcessSystem {
    /// A system writing program output and log lines to the given writers.
    pub fn with_output(print: TextOut, log: TextOut) -> ProcessSystem {
        ProcessSystem {
            print,
            log,
            overlay: Vec::new(),
        }
    }

    /// Adds variables that take precedence over the process environment (for example the
    /// contents of an env file), without touching the process environment itself.
    pub fn with_env(mut self, vars: impl IntoIterator<Item = (String, String)>) -> ProcessSystem {
        for (name, value) in vars {
            self.overlay.retain(|(n, _)| *n != name);
            self.overlay.push((name, value));
        }
        self
    }
}

impl System for ProcessSystem {
    fn print(&self, text: &str) {
        (self.print)(text);
    }

    fn log(&self, level: LogLevel, message: &str) {
        let tag = match level {
            LogLevel::Debug => "[DEBUG]",
            LogLevel::Info => "[INFO] ",
            LogLevel::Warn => "[WARN] ",
            LogLevel::Error => "[ERROR]",
        };
        (self.log)(&format!("{tag} {message}\n"));
    }

    fn env_var(&self, name: &str) -> Option<String> {
        match self.overlay.iter().find(|(n, _)| n == name) {
            Some((_, value)) => Some(value.clone()),
            None => std::env::var(name).ok(),
        }
    }

    fn env_vars(&self) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = std::env::vars()
            .filter(|(n, _)| self.overlay.iter().all(|(o, _)| o != n))
            .collect();
        vars.extend(self.overlay.iter().cloned());
        vars
    }

    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        Box::pin(tokio::time::sleep(duration))
    }

    /// Spawned tasks run on the tokio runtime the execution runs on (on a current-thread
    /// runtime they interleave at their await points; on a multi-threaded one they run in
    /// parallel). Outside a tokio runtime they start at their first await.
    fn spawn(&self, task: BoxFuture<()>) -> Result<concerto_vm::host::Spawned, BoxFuture<()>> {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return Err(task);
        };
        let join = handle.spawn(task);
        let abort = join.abort_handle();
        Ok(concerto_vm::host::Spawned {
            done: Box::pin(async move {
                let _ = join.await;
            }),
            abort: Box::new(move || abort.abort()),
        })
    }

    fn random_bytes(&self, buf: &mut [u8]) {
        if getrandom::fill(buf).is_err() {
            // No OS randomness: fall back to the clock so the program can still run; the
            // values are then not secret.
            let mut x = self.now_ms() as u64 ^ 0x9E37_79B9_7F4A_7C15;
            for b in buf {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
        }
    }
}

/// The environment the program sees: the host's [`System`] with every variable hidden
/// except those the sandbox allows (`NAME`, or `PREFIX*` for every name starting with
/// `PREFIX`). The runtime hands this to the interpreter (`std::env`, `env()`); the connection
/// layer reads API keys from the unfiltered system.
pub(crate) struct EnvGuard {
    inner: Arc<dyn System>,
    allowed: Arc<[String]>,
}

impl EnvGuard {
    pub(crate) fn new(inner: Arc<dyn System>, allowed: &[String]) -> EnvGuard {
        EnvGuard {
            inner,
            allowed: allowed.iter().map(|p| p.trim().to_string()).collect(),
        }
    }

    fn allows(&self, name: &str) -> bool {
        concerto_tools::env_allowed(&self.allowed, name)
    }
}

impl System for EnvGuard {
    fn print(&self, text: &str) {
        self.inner.print(text);
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.inner.log(level, message);
    }

    fn env_var(&self, name: &str) -> Option<String> {
        if self.allows(name) {
            self.inner.env_var(name)
        } else {
            None
        }
    }

    fn env_vars(&self) -> Vec<(String, String)> {
        let mut vars = self.inner.env_vars();
        vars.retain(|(name, _)| self.allows(name));
        vars
    }

    fn now_ms(&self) -> i64 {
        self.inner.now_ms()
    }

    fn monotonic(&self) -> std::time::Instant {
        self.inner.monotonic()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        self.inner.sleep(duration)
    }

    fn spawn(&self, task: BoxFuture<()>) -> Result<concerto_vm::host::Spawned, BoxFuture<()>> {
        self.inner.spawn(task)
    }

    fn random_bytes(&self, buf: &mut [u8]) {
        self.inner.random_bytes(buf);
    }
}
