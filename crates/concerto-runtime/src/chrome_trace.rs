//! A run's spans as a Chrome Trace Event file (`concerto run --trace FILE.json`), which
//! Perfetto (ui.perfetto.dev) and chrome://tracing open: a timeline of the run, its tasks,
//! agent calls, requests, attempts and tool calls, showing which ran in parallel and where
//! the waiting was.
//!
//! [`ChromeTrace`] is a `tracing_subscriber` layer that keeps the spans of
//! [`vm::SPAN_TARGET`](crate::vm::SPAN_TARGET) in memory and writes them on
//! [`ChromeTrace::write`]. Each span becomes one complete event (`"ph": "X"`) with its
//! start, duration and fields as `args` (numbers and booleans as JSON numbers and
//! booleans). The run and every spawned task get a track (`tid`) of their own, named by a
//! `thread_name` record; a span goes on the track of the closest run or task above it. A
//! task runs one thing at a time, so the events of one track nest by time, and calls made
//! in parallel (by different tasks) sit on different tracks, side by side in time.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde_json::{Map, Value as Json, json};
use tracing::span::{Attributes, Id, Record};
use tracing::{Subscriber, field::Field, field::Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The layer, and the handle that writes what it collected. Clones share one collection.
#[derive(Clone)]
pub struct ChromeTrace {
    shared: Arc<Shared>,
}

struct Shared {
    start: Instant,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Spans that ended, in the order they ended.
    done: Vec<Event>,
    /// Track names, by track number (0 is for spans outside any run or task).
    tracks: Vec<String>,
}

/// A finished (or, when written, still open) span.
struct Event {
    name: String,
    start_us: f64,
    dur_us: f64,
    track: usize,
    args: Map<String, Json>,
}

/// What the layer keeps in a span's extensions while it is open.
struct Open {
    name: String,
    start_us: f64,
    track: usize,
    args: Map<String, Json>,
}

impl Default for ChromeTrace {
    fn default() -> Self {
        ChromeTrace::new()
    }
}

impl ChromeTrace {
    /// A layer with nothing collected yet; times count from now.
    pub fn new() -> ChromeTrace {
        ChromeTrace {
            shared: Arc::new(Shared {
                start: Instant::now(),
                state: Mutex::new(State {
                    done: Vec::new(),
                    tracks: vec!["other".to_string()],
                }),
            }),
        }
    }

    fn now_us(&self) -> f64 {
        self.shared.start.elapsed().as_secs_f64() * 1e6
    }

    /// The trace as Chrome Trace Event JSON: the spans that ended, in the order they began.
    pub fn to_json(&self) -> Json {
        let state = self.shared.state.lock();
        let mut events: Vec<&Event> = state.done.iter().collect();
        events.sort_by(|a, b| a.start_us.total_cmp(&b.start_us));
        let mut out = Vec::with_capacity(events.len() + state.tracks.len() + 1);
        out.push(json!({
            "ph": "M", "pid": 1, "name": "process_name", "args": {"name": "concerto run"}
        }));
        for (tid, name) in state.tracks.iter().enumerate() {
            if !events.iter().any(|e| e.track == tid) {
                continue;
            }
            out.push(json!({
                "ph": "M", "pid": 1, "tid": tid, "name": "thread_name", "args": {"name": name}
            }));
        }
        for e in events {
            out.push(json!({
                "ph": "X",
                "pid": 1,
                "tid": e.track,
                "name": e.name,
                "cat": "concerto",
                "ts": e.start_us,
                "dur": e.dur_us,
                "args": e.args,
            }));
        }
        json!({ "traceEvents": out, "displayTimeUnit": "ms" })
    }

    /// Writes the trace to `path` (replacing a file there).
    ///
    /// # Errors
    /// The file cannot be created or written.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
        serde_json::to_writer(&mut file, &self.to_json())?;
        file.write_all(b"\n")?;
        file.flush()
    }
}

/// Field values as JSON: numbers and booleans as such, everything else as its text.
struct Fields<'a>(&'a mut Map<String, Json>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), Json::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_string(), Json::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), json!(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), json!(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), json!(value));
    }
}

impl<S> Layer<S> for ChromeTrace
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut args = Map::new();
        attrs.record(&mut Fields(&mut args));
        let meta = span.metadata();
        let track = if matches!(meta.name(), "run" | "task") {
            let mut state = self.shared.state.lock();
            let label = match args.get("concerto.task").and_then(Json::as_str) {
                Some(task) => format!("task {task}"),
                None => meta.name().to_string(),
            };
            state.tracks.push(label);
            state.tracks.len() - 1
        } else {
            span.parent()
                .and_then(|p| p.extensions().get::<Open>().map(|o| o.track))
                .unwrap_or(0)
        };
        // `otel.name` is the conventional name (`chat <model>`); the span's own name
        // otherwise.
        let name = match args.remove("otel.name") {
            Some(Json::String(name)) => name,
            _ => meta.name().to_string(),
        };
        span.extensions_mut().insert(Open {
            name,
            start_us: self.now_us(),
            track,
            args,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(open) = span.extensions_mut().get_mut::<Open>()
        {
            values.record(&mut Fields(&mut open.args));
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(open) = span.extensions_mut().remove::<Open>() else {
            return;
        };
        let end = self.now_us();
        self.shared.state.lock().done.push(Event {
            name: open.name,
            start_us: open.start_us,
            dur_us: (end - open.start_us).max(0.0),
            track: open.track,
            args: open.args,
        });
    }
}
