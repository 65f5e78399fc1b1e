//! Writer-backed sinks: one line per emit, written through as soon as it is emitted (a
//! reader of the JSON-lines stream sees each emit live, and a killed run loses none it made).

use std::io::{LineWriter, Write};

use concerto_vm::Value;
use concerto_vm::host::{EmitSink, HostError};
use parking_lot::Mutex;

use crate::FlushSink;

/// A line-buffered writer shared by the line sinks: each complete line is written out at
/// once.
struct Lines(Mutex<LineWriter<Box<dyn Write + Send>>>);

impl Lines {
    fn new(out: impl Write + Send + 'static) -> Lines {
        Lines(Mutex::new(LineWriter::new(Box::new(out))))
    }

    fn write(&self, mut line: String) -> Result<(), HostError> {
        line.push('\n');
        self.0.lock().write_all(line.as_bytes()).map_err(io_error)
    }

    fn flush(&self) -> Result<(), HostError> {
        self.0.lock().flush().map_err(io_error)
    }
}

fn io_error(err: std::io::Error) -> HostError {
    HostError::failed(format!("cannot write emit: {err}"))
}

/// Writes one JSON object per emit: `{"channel": "...", "payload": <value as JSON>}`.
pub struct JsonLinesSink(Lines);

impl JsonLinesSink {
    /// A sink writing each line to `out` as it is emitted.
    pub fn new(out: impl Write + Send + 'static) -> JsonLinesSink {
        JsonLinesSink(Lines::new(out))
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
        self.0.write(JsonLinesSink::line(channel, payload))
    }
}

impl FlushSink for JsonLinesSink {
    fn flush(&self) -> Result<(), HostError> {
        self.0.flush()
    }
}

/// Writes `[emit:channel] <display of payload>` per emit, for people.
pub struct TextSink(Lines);

impl TextSink {
    /// A sink writing each line to `out` as it is emitted.
    pub fn new(out: impl Write + Send + 'static) -> TextSink {
        TextSink(Lines::new(out))
    }
}

impl EmitSink for TextSink {
    fn emit(&self, channel: &str, payload: &Value) -> Result<(), HostError> {
        self.0
            .write(format!("[emit:{channel}] {}", payload.to_display()))
    }
}

impl FlushSink for TextSink {
    fn flush(&self) -> Result<(), HostError> {
        self.0.flush()
    }
}
