//! Writer-backed sinks.

use std::io::{BufWriter, Write};

use concerto_vm::Value;
use concerto_vm::host::{EmitSink, HostError};
use parking_lot::Mutex;

use crate::FlushSink;

fn io_error(err: std::io::Error) -> HostError {
    HostError::failed(format!("cannot write emit: {err}"))
}

/// Writes one JSON object per emit: `{"channel": "...", "payload": <value as JSON>}`.
pub struct JsonLinesSink {
    out: Mutex<BufWriter<Box<dyn Write + Send>>>,
}

impl JsonLinesSink {
    /// A sink writing to `out` (buffered; call [`FlushSink::flush`]).
    pub fn new(out: impl Write + Send + 'static) -> JsonLinesSink {
        JsonLinesSink {
            out: Mutex::new(BufWriter::new(Box::new(out))),
        }
    }

    /// The JSON line for one emit (without the newline).
    pub fn line(channel: &str, payload: &Value) -> String {
        let mut obj = serde_json::Map::new();
        obj.insert(
            "channel".to_string(),
            serde_json::Value::String(channel.to_string()),
        );
        obj.insert("payload".to_string(), payload.to_json());
        serde_json::Value::Object(obj).to_string()
    }
}

impl EmitSink for JsonLinesSink {
    fn emit(&self, channel: &str, payload: &Value) -> Result<(), HostError> {
        let mut line = JsonLinesSink::line(channel, payload);
        line.push('\n');
        self.out.lock().write_all(line.as_bytes()).map_err(io_error)
    }
}

impl FlushSink for JsonLinesSink {
    fn flush(&self) -> Result<(), HostError> {
        self.out.lock().flush().map_err(io_error)
    }
}

/// Writes `[emit:channel] <display of payload>` per emit, for people.
pub struct TextSink {
    out: Mutex<BufWriter<Box<dyn Write + Send>>>,
}

impl TextSink {
    /// A sink writing to `out` (buffered; call [`FlushSink::flush`]).
    pub fn new(out: impl Write + Send + 'static) -> TextSink {
        TextSink {
            out: Mutex::new(BufWriter::new(Box::new(out))),
        }
    }
}

impl EmitSink for TextSink {
    fn emit(&self, channel: &str, payload: &Value) -> Result<(), HostError> {
        let line = format!("[emit:{channel}] {}\n", payload.to_display());
        self.out.lock().write_all(line.as_bytes()).map_err(io_error)
    }
}

impl FlushSink for TextSink {
    fn flush(&self) -> Result<(), HostError> {
        self.out.lock().flush().map_err(io_error)
    }
}
