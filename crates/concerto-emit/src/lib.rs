//! Emit sinks: where a program's `emit(channel, payload)` goes.
//!
//! - [`EmitHub`] implements the VM's [`EmitSink`] and fans each emit out to catch-all sinks,
//!   channel listeners and prefix listeners, either at once ([`Delivery::Immediate`], the
//!   default) or from an in-memory queue ([`Delivery::Batch`]). It answers emit-await with
//!   the handlers registered by [`EmitHub::on_emit`], within a timeout. A listener that
//!   panics is isolated: the panic is caught and reported, the runtime goes on.
//! - [`JsonLinesSink`] writes the JSON-lines protocol (`{"channel": …, "payload": …}` per
//!   line) to any writer; [`TextSink`] writes `[emit:channel] payload` for people.
//!
//! ```
//! use std::sync::Arc;
//! use concerto_emit::{EmitHub, JsonLinesSink};
//! use concerto_vm::{Value, host::EmitSink};
//! let hub = EmitHub::new();
//! let out = Arc::new(parking_lot::Mutex::new(Vec::new()));
//! hub.add_sink(Arc::new(JsonLinesSink::new(SharedBuf(out.clone()))));
//! hub.emit("result", &Value::Int(1)).unwrap();
//! hub.flush().unwrap();
//! assert_eq!(String::from_utf8(out.lock().clone()).unwrap(), "{\"channel\":\"result\",\"payload\":1}\n");
//! # struct SharedBuf(Arc<parking_lot::Mutex<Vec<u8>>>);
//! # impl std::io::Write for SharedBuf {
//! #     fn write(&mut self, b: &[u8]) -> std::io::Result<usize> { self.0.lock().extend_from_slice(b); Ok(b.len()) }
//! #     fn flush(&mut self) -> std::io::Result<()> { Ok(()) }
//! # }
//! ```
//!
//! # Delivery
//!
//! In [`Delivery::Immediate`] mode `emit` writes to the sinks and calls the listeners before
//! it returns. In [`Delivery::Batch`] mode `emit` only queues a copy of the payload;
//! [`EmitHub::flush`] (called by the runtime at the end of each execution, and by the host
//! whenever it likes) delivers the queue in order, and so does the emit that makes the queue
//! reach `max_batch`. Every emit is delivered exactly once, in the order it was accepted,
//! however many threads emit and flush at once.
//!
//! # Limits
//!
//! [`EmitHub::set_max_queue`] bounds the queue; when it is full the emitting call delivers
//! the queue itself before its emit is accepted (back-pressure, see
//! [`EmitHub::set_max_queue`] for why). Emits are never dropped.
//!
//! # Emit-await
//!
//! Before its handler is called, emit-await delivers the queue and flushes the sinks, so a
//! reply never overtakes an earlier emit. The handler has [`EmitHub::set_await_timeout`]
//! to answer ([`DEFAULT_AWAIT_TIMEOUT`] by default).
//!
//! # Blocking
//!
//! `emit` and `emit_await` run sinks and listeners on the calling thread: always in
//! immediate mode, in batch mode when the emit fills a batch or the queue, and for the
//! flush before an emit-await. They wait for a delivery under way on another thread only
//! when the queue is full or an emit-await needs the queue delivered. Keep listeners
//! quick; hand slow work to another task.
//!
//! # Source layout
//! - `lib.rs`: [`EmitHub`], [`Delivery`], delivery and the queue.
//! - `awaiting`: emit-await (handler lookup, timeout, errors).
//! - `snapshot`: copies of queued payloads.
//! - `sinks`: [`JsonLinesSink`], [`TextSink`].
#![warn(missing_docs)]

mod awaiting;
mod sinks;
mod snapshot;

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::ThreadId;
use std::time::Duration;

use concerto_vm::Value;
use concerto_vm::host::{BoxFuture, EmitSink, HostError};
use parking_lot::{Mutex, RwLock};

pub use sinks::{JsonLinesSink, TextSink};

/// A listener for emits: receives the channel and the payload.
pub type Listener = Arc<dyn Fn(&str, &Value) + Send + Sync>;

/// A handler for emit-await: receives the payload, answers with a value later.
pub type AwaitHandler = Arc<dyn Fn(Value) -> BoxFuture<Result<Value, HostError>> + Send + Sync>;

/// An emit-await handler that is told the channel ([`EmitHub::on_emit_any`]).
pub type ChannelAwaitHandler =
    Arc<dyn Fn(&str, Value) -> BoxFuture<Result<Value, HostError>> + Send + Sync>;

/// How long an emit-await waits for its handler unless
/// [`EmitHub::set_await_timeout`] says otherwise: 30 seconds, long enough for a person
/// to answer a prompt, short enough that a forgotten handler does not hang a run.
pub const DEFAULT_AWAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Listener panic messages kept by [`EmitHub::listener_panics`]; later ones are only
/// counted ([`EmitHub::listener_panic_count`]), so a listener that panics on every emit
/// cannot grow memory without bound.
pub const MAX_KEPT_PANICS: usize = 1000;

/// A sink that can also flush what it buffered.
pub trait FlushSink: EmitSink {
    /// Writes out anything buffered.
    ///
    /// # Errors
    /// The underlying writer's error.
    fn flush(&self) -> Result<(), HostError>;
}

/// How [`EmitHub`] delivers fire-and-forget emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// Sinks and listeners run inside `emit`, before it returns (the default).
    #[default]
    Immediate,
    /// `emit` queues the emit; [`EmitHub::flush`] delivers the queue in order, and so does
    /// the emit that makes the queue hold `max_batch` emits. `max_batch: 0` turns that
    /// automatic delivery off: the queue is then delivered by `flush` (and by the
    /// back-pressure of [`EmitHub::set_max_queue`]) only.
    Batch {
        /// Queue length at which the emitting call delivers the queue.
        max_batch: usize,
    },
}

#[derive(Clone)]
enum Filter {
    Channel(String),
    Prefix(String),
}

impl Filter {
    fn matches(&self, channel: &str) -> bool {
        match self {
            Filter::Channel(c) => c == channel,
            Filter::Prefix(p) => channel.starts_with(p.as_str()),
        }
    }
}

#[derive(Clone, Copy)]
struct Settings {
    delivery: Delivery,
    max_queue: Option<usize>,
    await_timeout: Option<Duration>,
}

/// One queued emit.
struct Queued {
    /// The emit's key ([`EmitSink::emit_keyed`]).
    key: Option<String>,
    channel: String,
    payload: Value,
}

/// Fans emits out to sinks and listeners, queues them in batch mode and answers
/// emit-await. Cheap to share: every method takes `&self`.
pub struct EmitHub {
    /// Copy-on-write: delivery clones the `Arc`, so listeners run without a lock held and
    /// may register more listeners or emit again.
    listeners: RwLock<Arc<Vec<(Filter, Listener)>>>,
    sinks: RwLock<Arc<Vec<Arc<dyn FlushSink>>>>,
    await_handlers: RwLock<Vec<(Filter, AwaitHandler)>>,
    /// Answers emit-await on a channel no other handler takes, given the channel.
    await_fallback: RwLock<Option<ChannelAwaitHandler>>,
    panics: Mutex<Vec<String>>,
    panic_count: AtomicU64,
    settings: RwLock<Settings>,
    /// Emits accepted in batch mode and not yet taken for delivery.
    queue: Mutex<VecDeque<Queued>>,
    /// Held while a batch is delivered: one deliverer at a time, batches in order.
    delivering: Mutex<()>,
    /// The thread holding `delivering`, to recognise emits and flushes made by listeners.
    deliverer: Mutex<Option<ThreadId>>,
    /// Emits accepted (fire-and-forget and await).
    emits: AtomicU64,
    /// Emits accepted in batch mode and not yet delivered (queued or being delivered).
    /// Only ever raised with `queue` locked, which makes the queue bound exact.
    pending: AtomicUsize,
}

impl Default for EmitHub {
    fn default() -> EmitHub {
        EmitHub {
            listeners: RwLock::default(),
            sinks: RwLock::default(),
            await_handlers: RwLock::default(),
            await_fallback: RwLock::default(),
            panics: Mutex::default(),
            panic_count: AtomicU64::new(0),
            settings: RwLock::new(Settings {
                delivery: Delivery::Immediate,
                max_queue: None,
                await_timeout: Some(DEFAULT_AWAIT_TIMEOUT),
            }),
            queue: Mutex::default(),
            delivering: Mutex::new(()),
            deliverer: Mutex::new(None),
            emits: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
        }
    }
}

impl EmitHub {
    /// An empty hub: immediate delivery, no queue bound, emit-await timeout
    /// [`DEFAULT_AWAIT_TIMEOUT`].
    pub fn new() -> EmitHub {
        EmitHub::default()
    }

    /// Calls `listener` for every emit on `channel`.
    pub fn on(&self, channel: &str, listener: Listener) {
        Arc::make_mut(&mut self.listeners.write())
            .push((Filter::Channel(channel.into()), listener));
    }

    /// Calls `listener` for every emit whose channel starts with `prefix` (`""`: all).
    pub fn on_prefix(&self, prefix: &str, listener: Listener) {
        Arc::make_mut(&mut self.listeners.write()).push((Filter::Prefix(prefix.into()), listener));
    }

    /// Sends every emit to `sink` as well.
    pub fn add_sink(&self, sink: Arc<dyn FlushSink>) {
        Arc::make_mut(&mut self.sinks.write()).push(sink);
    }

    /// Answers emit-await on `channel` with `handler`, replacing an earlier handler for the
    /// same channel. A handler for the exact channel wins over prefix handlers.
    pub fn on_emit(&self, channel: &str, handler: AwaitHandler) {
        awaiting::register(
            &mut self.await_handlers.write(),
            Filter::Channel(channel.into()),
            handler,
        );
    }

    /// Answers emit-await on every channel starting with `prefix` that has no handler of its
    /// own, replacing an earlier handler for the same prefix. The longest matching prefix
    /// wins.
    pub fn on_emit_prefix(&self, prefix: &str, handler: AwaitHandler) {
        awaiting::register(
            &mut self.await_handlers.write(),
            Filter::Prefix(prefix.into()),
            handler,
        );
    }

    /// Answers emit-await on every channel that no channel or prefix handler takes, with
    /// the channel's name, replacing an earlier such handler.
    pub fn on_emit_any(&self, handler: ChannelAwaitHandler) {
        *self.await_fallback.write() = Some(handler);
    }

    /// Chooses how fire-and-forget emits are delivered (default [`Delivery::Immediate`]).
    ///
    /// Emits already queued stay queued when switching to immediate delivery: the next
    /// emit (or [`EmitHub::flush`]) delivers them first, so order is kept.
    pub fn set_delivery(&self, delivery: Delivery) {
        self.settings.write().delivery = delivery;
    }

    /// The delivery mode.
    pub fn delivery(&self) -> Delivery {
        self.settings.read().delivery
    }

    /// Bounds the batch queue to `max` emits (`None`, the default: unbounded; `Some(0)` is
    /// taken as `Some(1)`). Emits being delivered count until they have been delivered, so
    /// at most `max` payloads are held at any time.
    ///
    /// **When the queue is full, the emitting call delivers the queue itself, then queues
    /// its emit (back-pressure).** If another thread is delivering at that moment, the
    /// call waits for it and delivers what remains. Why back-pressure rather than an error:
    ///
    /// - nothing is lost and memory stays bounded, which are the two things the limit is
    ///   for;
    /// - a program that runs with [`Delivery::Immediate`] — where every emit already waits
    ///   for the sinks and listeners, however slow — must not start failing only because
    ///   the host chose batching; at worst a full queue makes an emit cost what an
    ///   immediate emit costs;
    /// - the VM treats an emit error as the end of the execution, far too harsh for
    ///   "listeners are slow".
    ///
    /// The one case that cannot wait is a listener that emits (on the thread that is
    /// delivering) while the queue is full: that emit fails with a
    /// [`HostErrorKind::Limit`](concerto_vm::host::HostErrorKind::Limit) error naming the
    /// channel and the limit, because the queue cannot drain until that listener returns.
    pub fn set_max_queue(&self, max: Option<usize>) {
        self.settings.write().max_queue = max.map(|m| m.max(1));
    }

    /// The queue bound.
    pub fn max_queue(&self) -> Option<usize> {
        self.settings.read().max_queue
    }

    /// How long emit-await waits for its handler's reply (`None`: for ever). The default
    /// is [`DEFAULT_AWAIT_TIMEOUT`]. After it the await fails with a
    /// [`HostErrorKind::Timeout`](concerto_vm::host::HostErrorKind::Timeout) error naming
    /// the channel and the timeout. The timer is Tokio's: with a timeout set, emit-await
    /// must be awaited inside a Tokio runtime with its time driver enabled (the Concerto
    /// runtime's is); outside any Tokio runtime the await fails with an error saying so.
    pub fn set_await_timeout(&self, timeout: Option<Duration>) {
        self.settings.write().await_timeout = timeout;
    }

    /// The emit-await timeout.
    pub fn await_timeout(&self) -> Option<Duration> {
        self.settings.read().await_timeout
    }

    /// Emits accepted so far: every fire-and-forget emit that was queued or delivered
    /// (including one whose delivery failed) and every emit-await.
    pub fn emit_count(&self) -> u64 {
        self.emits.load(Ordering::Acquire)
    }

    /// Emits accepted in batch mode and not delivered yet (queued or being delivered).
    pub fn queued(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Delivers every queued emit, in order, then flushes every sink. Safe to call from any
    /// thread at any time, also concurrently: each emit is delivered exactly once. Called by
    /// a listener during a delivery, it returns at once (the delivery under way goes on
    /// until the queue is empty).
    ///
    /// # Errors
    /// The first sink error (the emits after the one that failed stay queued, in order,
    /// for the next flush), or a sink that panicked.
    pub fn flush(&self) -> Result<(), HostError> {
        let drained = self.drain(true);
        let mut first = drained.err();
        let sinks = self.sinks.read().clone();
        for sink in sinks.iter() {
            let flushed = match std::panic::catch_unwind(AssertUnwindSafe(|| sink.flush())) {
                Ok(r) => r,
                Err(panic) => Err(HostError::failed(format!(
                    "an emit sink panicked while flushing: {}",
                    panic_text(&*panic)
                ))),
            };
            if let Err(e) = flushed {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Messages of listener panics caught so far (the first [`MAX_KEPT_PANICS`]).
    pub fn listener_panics(&self) -> Vec<String> {
        self.panics.lock().clone()
    }

    /// Listener panics caught so far.
    pub fn listener_panic_count(&self) -> u64 {
        self.panic_count.load(Ordering::Acquire)
    }

    /// Queues an emit (batch mode), applying the queue bound.
    fn enqueue(
        &self,
        key: Option<&str>,
        channel: &str,
        payload: &Value,
        max_batch: usize,
        max_queue: Option<usize>,
    ) -> Result<(), HostError> {
        let mut item = Some(Queued {
            key: key.map(str::to_string),
            channel: channel.to_string(),
            payload: snapshot::snapshot(payload),
        });
        loop {
            let queued_len = {
                let mut queue = self.queue.lock();
                let room = max_queue.is_none_or(|max| self.pending.load(Ordering::Acquire) < max);
                match item.take() {
                    Some(it) if room => {
                        queue.push_back(it);
                        self.pending.fetch_add(1, Ordering::AcqRel);
                        self.emits.fetch_add(1, Ordering::AcqRel);
                        Some(queue.len())
                    }
                    other => {
                        item = other;
                        None
                    }
                }
            };
            match queued_len {
                Some(len) => {
                    if max_batch > 0 && len >= max_batch {
                        self.drain(false)?;
                    }
                    return Ok(());
                }
                None if self.on_delivering_thread() => {
                    return Err(HostError::limit(format!(
                        "emit queue full: {} emits pending on the emit hub when a listener \
                         emitted on channel `{channel}` during delivery (the queue cannot \
                         drain until the listener returns); raise the limit \
                         (Limits::max_emit_queue / EmitHub::set_max_queue, now {}) or do not \
                         emit from listeners",
                        self.pending.load(Ordering::Acquire),
                        max_queue.unwrap_or(0),
                    )));
                }
                // Back-pressure: deliver the queue, then try again.
                None => self.drain(true)?,
            }
        }
    }

    fn on_delivering_thread(&self) -> bool {
        *self.deliverer.lock() == Some(std::thread::current().id())
    }

    /// Delivers the queue until it is empty. `wait`: wait for a delivery under way on
    /// another thread (else leave the queue to it). Afterwards, if emits made meanwhile
    /// filled the queue to `max_batch` again, delivers once more without waiting, so no
    /// automatic delivery is missed while the lock was held.
    fn drain(&self, wait: bool) -> Result<(), HostError> {
        if self.on_delivering_thread() {
            // A listener emitted or flushed: the delivery under way takes the queue.
            return Ok(());
        }
        let mut wait = wait;
        loop {
            let guard = if wait {
                self.delivering.lock()
            } else {
                match self.delivering.try_lock() {
                    Some(g) => g,
                    None => return Ok(()),
                }
            };
            let owner = Deliverer::mark(&self.deliverer);
            let result = self.drain_locked();
            drop(owner);
            drop(guard);
            result?;
            let again = match self.settings.read().delivery {
                Delivery::Batch { max_batch } if max_batch > 0 => {
                    self.queue.lock().len() >= max_batch
                }
                _ => false,
            };
            if !again {
                return Ok(());
            }
            wait = false;
        }
    }

    /// Delivers batches until the queue is empty; the caller holds `delivering`.
    fn drain_locked(&self) -> Result<(), HostError> {
        loop {
            let batch = std::mem::take(&mut *self.queue.lock());
            if batch.is_empty() {
                return Ok(());
            }
            let sinks = self.sinks.read().clone();
            let listeners = self.listeners.read().clone();
            let mut items = batch.into_iter();
            while let Some(item) = items.next() {
                let delivered = self.deliver(
                    item.key.as_deref(),
                    &item.channel,
                    &item.payload,
                    &sinks,
                    &listeners,
                );
                drop(item);
                self.pending.fetch_sub(1, Ordering::AcqRel);
                if let Err(e) = delivered {
                    // Keep the rest, ahead of what was queued meanwhile.
                    let mut queue = self.queue.lock();
                    for rest in items.rev() {
                        queue.push_front(rest);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Delivers one emit to the sinks, then to the matching listeners.
    fn deliver(
        &self,
        key: Option<&str>,
        channel: &str,
        payload: &Value,
        sinks: &[Arc<dyn FlushSink>],
        listeners: &[(Filter, Listener)],
    ) -> Result<(), HostError> {
        for sink in sinks {
            let send = || match key {
                Some(key) => sink.emit_keyed(key, channel, payload),
                None => sink.emit(channel, payload),
            };
            match std::panic::catch_unwind(AssertUnwindSafe(send)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(HostError {
                        kind: e.kind,
                        message: format!(
                            "emit on channel `{channel}` not delivered: {}",
                            e.message
                        ),
                        provider: None,
                    });
                }
                Err(panic) => {
                    return Err(HostError::failed(format!(
                        "an emit sink panicked on channel `{channel}`: {}",
                        panic_text(&*panic)
                    )));
                }
            }
        }
        for (filter, listener) in listeners {
            if !filter.matches(channel) {
                continue;
            }
            let call = std::panic::catch_unwind(AssertUnwindSafe(|| listener(channel, payload)));
            if let Err(panic) = call {
                self.panic_count.fetch_add(1, Ordering::AcqRel);
                let mut panics = self.panics.lock();
                if panics.len() < MAX_KEPT_PANICS {
                    panics.push(format!(
                        "listener for `{channel}` panicked: {}",
                        panic_text(&*panic)
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Marks the current thread as the deliverer until dropped (also when unwinding, so a
/// panic can never leave a thread marked).
struct Deliverer<'a>(&'a Mutex<Option<ThreadId>>);

impl<'a> Deliverer<'a> {
    fn mark(slot: &'a Mutex<Option<ThreadId>>) -> Deliverer<'a> {
        *slot.lock() = Some(std::thread::current().id());
        Deliverer(slot)
    }
}

impl Drop for Deliverer<'_> {
    fn drop(&mut self) {
        *self.0.lock() = None;
    }
}

/// The message of a caught panic.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".to_string())
}

impl EmitHub {
    /// An emit, with its key when it has one.
    fn emit_with(
        &self,
        key: Option<&str>,
        channel: &str,
        payload: &Value,
    ) -> Result<(), HostError> {
        let settings = *self.settings.read();
        match settings.delivery {
            Delivery::Immediate => {
                self.emits.fetch_add(1, Ordering::AcqRel);
                if self.pending.load(Ordering::Acquire) > 0 {
                    // Left over from batch mode: deliver those first.
                    self.drain(true)?;
                }
                let sinks = self.sinks.read().clone();
                let listeners = self.listeners.read().clone();
                self.deliver(key, channel, payload, &sinks, &listeners)
            }
            Delivery::Batch { max_batch } => {
                self.enqueue(key, channel, payload, max_batch, settings.max_queue)
            }
        }
    }
}

impl EmitSink for EmitHub {
    fn emit(&self, channel: &str, payload: &Value) -> Result<(), HostError> {
        self.emit_with(None, channel, payload)
    }

    /// The key goes to every sink ([`EmitSink::emit_keyed`]); listeners get the emit.
    fn emit_keyed(&self, key: &str, channel: &str, payload: &Value) -> Result<(), HostError> {
        self.emit_with(Some(key), channel, payload)
    }

    /// When any sink settles (delivers later, see [`EmitSink::settle`]).
    fn settles(&self) -> bool {
        self.sinks.read().iter().any(|sink| sink.settles())
    }

    /// Delivers what batch mode queued, then waits for every settling sink in turn.
    fn settle(&self) -> Option<BoxFuture<Result<(), HostError>>> {
        let sinks = self.sinks.read().clone();
        if !sinks.iter().any(|sink| sink.settles()) {
            return None;
        }
        if let Err(e) = self.drain(true) {
            return Some(Box::pin(async move { Err(e) }));
        }
        let waits: Vec<_> = sinks.iter().filter_map(|sink| sink.settle()).collect();
        if waits.is_empty() {
            return None;
        }
        Some(Box::pin(async move {
            for wait in waits {
                wait.await?;
            }
            Ok(())
        }))
    }

    fn emit_await(&self, channel: &str, payload: Value) -> BoxFuture<Result<Value, HostError>> {
        self.emits.fetch_add(1, Ordering::AcqRel);
        // The host must see every earlier emit before it is asked to answer this one.
        if let Err(e) = self.flush() {
            let e = HostError {
                kind: e.kind,
                message: format!(
                    "emit-await on channel `{channel}`: earlier emits could not be delivered: {}",
                    e.message
                ),
                provider: None,
            };
            return Box::pin(async move { Err(e) });
        }
        let handler = awaiting::find(&self.await_handlers.read(), channel).or_else(|| {
            let any = self.await_fallback.read().clone()?;
            let name = channel.to_string();
            Some(Arc::new(move |payload| any(&name, payload)) as AwaitHandler)
        });
        let timeout = self.settings.read().await_timeout;
        awaiting::call(channel, handler, payload, timeout)
    }
}
