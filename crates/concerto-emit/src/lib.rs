//! Emit sinks: where a program's `emit(channel, payload)` goes.
//!
//! - [`EmitHub`] implements the VM's [`EmitSink`] and fans each emit out to channel
//!   listeners, prefix listeners and catch-all sinks. A listener that panics is isolated:
//!   the panic is caught and reported, the runtime goes on.
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
//! # Source layout
//! - `lib.rs`: [`EmitHub`].
//! - `sinks`: [`JsonLinesSink`], [`TextSink`].
#![warn(missing_docs)]

mod sinks;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use concerto_vm::Value;
use concerto_vm::host::{BoxFuture, EmitSink, HostError};
use parking_lot::RwLock;

pub use sinks::{JsonLinesSink, TextSink};

/// A listener for emits: receives the channel and the payload.
pub type Listener = Arc<dyn Fn(&str, &Value) + Send + Sync>;

/// A handler for emit-await: receives the payload, answers with a value later.
pub type AwaitHandler = Arc<dyn Fn(Value) -> BoxFuture<Result<Value, HostError>> + Send + Sync>;

/// A sink that can also flush what it buffered.
pub trait FlushSink: EmitSink {
    /// Writes out anything buffered.
    ///
    /// # Errors
    /// The underlying writer's error.
    fn flush(&self) -> Result<(), HostError>;
}

enum Filter {
    Channel(String),
    Prefix(String),
}

/// Fans emits out to listeners and sinks.
#[derive(Default)]
pub struct EmitHub {
    listeners: RwLock<Vec<(Filter, Listener)>>,
    sinks: RwLock<Vec<Arc<dyn FlushSink>>>,
    await_handlers: RwLock<Vec<(String, AwaitHandler)>>,
    panics: parking_lot::Mutex<Vec<String>>,
}

impl EmitHub {
    /// An empty hub.
    pub fn new() -> EmitHub {
        EmitHub::default()
    }

    /// Calls `listener` for every emit on `channel`.
    pub fn on(&self, channel: &str, listener: Listener) {
        self.listeners
            .write()
            .push((Filter::Channel(channel.to_string()), listener));
    }

    /// Calls `listener` for every emit whose channel starts with `prefix`.
    pub fn on_prefix(&self, prefix: &str, listener: Listener) {
        self.listeners
            .write()
            .push((Filter::Prefix(prefix.to_string()), listener));
    }

    /// Sends every emit to `sink` as well.
    pub fn add_sink(&self, sink: Arc<dyn FlushSink>) {
        self.sinks.write().push(sink);
    }

    /// Answers emit-await on `channel` with `handler`.
    pub fn on_emit(&self, channel: &str, handler: AwaitHandler) {
        self.await_handlers
            .write()
            .push((channel.to_string(), handler));
    }

    /// Flushes every sink.
    ///
    /// # Errors
    /// The first sink error.
    pub fn flush(&self) -> Result<(), HostError> {
        for sink in self.sinks.read().iter() {
            sink.flush()?;
        }
        Ok(())
    }

    /// Messages of listener panics caught so far.
    pub fn listener_panics(&self) -> Vec<String> {
        self.panics.lock().clone()
    }
}

impl EmitSink for EmitHub {
    fn emit(&self, channel: &str, payload: &Value) -> Result<(), HostError> {
        for sink in self.sinks.read().iter() {
            sink.emit(channel, payload)?;
        }
        for (filter, listener) in self.listeners.read().iter() {
            let wanted = match filter {
                Filter::Channel(c) => c == channel,
                Filter::Prefix(p) => channel.starts_with(p.as_str()),
            };
            if wanted {
                let call =
                    std::panic::catch_unwind(AssertUnwindSafe(|| listener(channel, payload)));
                if let Err(panic) = call {
                    let text = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a non-string panic".to_string());
                    self.panics
                        .lock()
                        .push(format!("listener for `{channel}` panicked: {text}"));
                }
            }
        }
        Ok(())
    }

    fn emit_await(&self, channel: &str, payload: Value) -> BoxFuture<Result<Value, HostError>> {
        let handler = self
            .await_handlers
            .read()
            .iter()
            .find(|(c, _)| c == channel)
            .map(|(_, h)| h.clone());
        match handler {
            Some(h) => h(payload),
            None => {
                let msg = format!("no handler is registered for emit-await on channel `{channel}`");
                Box::pin(async move { Err(HostError::failed(msg)) })
            }
        }
    }
}
