//! [`Ctx`]: the part of an execution's state that built-in functions and methods may use
//! (the prepared program, the globals, the host, the counters, caches and the random
//! generator), and its helpers (emits, the clock, sleeping).

use std::sync::Arc;
use std::time::{Duration, Instant};

use concerto_ir::Program;

use super::{ExecConfig, ExecStats, Host};
use crate::error::VmError;
use crate::host::BoxFuture;
use crate::value::{Str, Value};
use crate::vm::Vm;

/// The emits of a test run so far: (channel, payload), in order.
pub(crate) type CapturedEmits = Arc<parking_lot::Mutex<Vec<(Str, Value)>>>;

/// Execution state a built-in may use.
pub(crate) struct Ctx {
    pub(crate) vm: Arc<Vm>,
    pub(crate) globals: Vec<Value>,
    pub(crate) host: Host,
    pub(crate) config: ExecConfig,
    pub(crate) stats: ExecStats,
    /// Replies kept by agents' `@cache`, by request.
    pub(crate) agent_cache: std::collections::HashMap<String, (crate::host::ChatResponse, Instant)>,
    /// Hashmap change callbacks registered by this execution's code.
    pub(crate) watchers: Vec<crate::hashmaps::Watcher>,
    /// Counters of finished spawned tasks (shared with the tasks they spawn in turn).
    pub(crate) child_stats: crate::task::ChildStats,
    /// The entries last read for indexing a hashmap by position (see
    /// [`crate::host::MemoryStore::hashmap_version`]).
    pub(crate) indexed_entries: Option<crate::hashmaps::IndexedEntries>,
    /// Models answered by `MOCK_MODEL` in this execution (shared with its spawned tasks).
    pub(crate) mocks: Arc<parking_lot::Mutex<rustc_hash::FxHashMap<u32, concerto_ir::MockReply>>>,
    /// Emits kept for `test_emits()` (a test run only; shared with spawned tasks).
    pub(crate) captured: Option<CapturedEmits>,
    pub(super) rng: u64,
    /// Tasks spawned by this execution so far (the index of the next one).
    pub(super) spawned: u32,
    /// The emit sink asks the program to wait after each `EMIT` ([`EmitSink::settle`]).
    ///
    /// [`EmitSink::settle`]: crate::host::EmitSink::settle
    pub(super) settle_emits: bool,
}

impl Ctx {
    /// The program.
    pub(crate) fn program(&self) -> &Arc<Program> {
        &self.vm.program
    }

    /// A pseudo-random u64 (xorshift, seeded from the host).
    pub(crate) fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// Delivers an emit.
    pub(crate) fn emit(&mut self, channel: &str, payload: &Value) -> Result<(), VmError> {
        self.stats.emits += 1;
        if let Some(captured) = &self.captured {
            captured
                .lock()
                .push((Str::from(channel), payload.deep_copy()));
        }
        self.host.emit.emit(channel, payload).map_err(VmError::from)
    }

    /// Elapsed milliseconds since `start` (for lifecycle emits).
    pub(crate) fn elapsed_ms(&self, start: Instant) -> i64 {
        self.host
            .system
            .monotonic()
            .saturating_duration_since(start)
            .as_millis() as i64
    }

    /// Now, on the host's monotonic clock.
    pub(crate) fn now(&self) -> Instant {
        self.host.system.monotonic()
    }

    /// A future that sleeps.
    pub(crate) fn sleep(&self, duration: Duration) -> BoxFuture<Result<Value, VmError>> {
        let fut = self.host.system.sleep(duration);
        Box::pin(async move {
            fut.await;
            Ok(Value::Nil)
        })
    }
}
