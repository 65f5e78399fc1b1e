//! The canary: a distinctive API key never appears in any error message, `Debug` output
//! or tracing event, across every fault, even when the server echoes it back.
//!
//! In a test binary of its own: it installs a thread-local tracing subscriber, and tracing
//! caches per-callsite interest across threads, so tests running beside it could hide
//! events from it.

mod support;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::support::server::{MockServer, Step, openai_stream};
use crate::support::{env, one, request};
use concerto_conn::{ConnectionSettings, HttpConnections};
use concerto_vm::host::{ConnectionId, Connections, HostError, Program};
use parking_lot::Mutex;
use serde_json::json;

fn retrying(base: &str, attempts: u32) -> Arc<Program> {
    one(
        "openai",
        json!({"provider": "openai", "base_url": base, "default_model": "gpt-4o-mini",
               "retry": {"max_attempts": attempts, "backoff": "none"}}),
    )
}

fn error_body(message: &str) -> serde_json::Value {
    json!({"error": {"message": message, "type": "test_error"}})
}

// ---------------------------------------------------------------------------------------

/// Not shaped like a typical key, so only the connection layer's own redaction hides it.
const CANARY: &str = "zebra-CANARY-4417-quokka-key";

/// Captures every tracing event (fields and message) as text.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<String>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut text = self.0.lock();
        span.record(&mut Fields(&mut text));
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut text = self.0.lock();
        values.record(&mut Fields(&mut text));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut text = self.0.lock();
        event.record(&mut Fields(&mut text));
        text.push('\n');
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn echo(status: u16) -> Step {
    Step::json(
        status,
        error_body(&format!(
            "Incorrect API key provided: {CANARY}. Your headers were: Bearer {CANARY}"
        )),
    )
}

#[tokio::test]
async fn canary_key_never_appears_in_errors_debug_or_logs() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());

    let server = MockServer::start().await;
    let settings = ConnectionSettings {
        api_key: Some(CANARY.into()),
        headers: vec![("X-Api-Token".into(), format!("{CANARY}-header"))],
        ..ConnectionSettings::default()
    };
    let conns = HttpConnections::new()
        .with_env(env(&[]))
        .with_settings("openai", settings.clone())
        .with_settings("claude", settings.clone());
    let openai = retrying(&server.base(), 2);
    let claude = one(
        "claude",
        json!({"provider": "anthropic", "base_url": server.base(),
               "default_model": "claude-sonnet-4-20250514",
               "retry": {"max_attempts": 2, "backoff": "none"}}),
    );

    let mut stream_with_key = openai_stream(&["leaked ", CANARY], 1, 1);
    stream_with_key.truncate(3);
    let error_event = vec![format!(
        "event: error\ndata: {}\n\n",
        json!({"type": "error", "error": {"type": "overloaded_error",
               "message": format!("overloaded for key {CANARY}")}})
    )];
    let cases: Vec<(&str, Vec<Step>, bool, bool)> = vec![
        ("401 echo", vec![echo(401)], false, false),
        (
            "500 echo, retried",
            vec![echo(500), echo(500)],
            false,
            false,
        ),
        (
            "429 echo",
            vec![echo(429).header("retry-after", "0"), echo(429)],
            false,
            false,
        ),
        (
            "malformed echo",
            vec![Step::raw(200, &format!("not json {CANARY}"))],
            false,
            false,
        ),
        (
            "truncated stream echo",
            vec![Step::sse(stream_with_key)],
            true,
            false,
        ),
        (
            "timeout",
            vec![
                echo(500).delayed(Duration::from_secs(5)),
                echo(500).delayed(Duration::from_secs(5)),
            ],
            false,
            false,
        ),
        ("reset", vec![Step::reset(), Step::reset()], false, false),
        ("anthropic 401 echo", vec![echo(401)], false, true),
        (
            "anthropic stream error event",
            vec![Step::sse(error_event.clone()), Step::sse(error_event)],
            true,
            true,
        ),
    ];
    let mut seen = String::new();
    for (name, steps, stream, anthropic) in cases {
        server.script(steps);
        let mut req = request(None, "x");
        req.stream = Some(stream);
        req.timeout = Some(Duration::from_millis(300));
        let program = if anthropic { &claude } else { &openai };
        let err: HostError = conns.chat(program, ConnectionId(0), req).await.unwrap_err();
        assert!(!err.message.contains(CANARY), "{name}: {}", err.message);
        assert!(!format!("{err:?}").contains(CANARY), "{name}: {err:?}");
        assert!(
            err.message.contains("connection '"),
            "{name}: {}",
            err.message
        );
        let _ = writeln!(seen, "{name}: {}", err.message);
    }
    // The server really saw (and echoed) the key: the test would catch a leak.
    let got = server.requests();
    assert!(
        got.iter()
            .any(|r| r.header("authorization") == Some(&*format!("Bearer {CANARY}")))
    );
    assert!(got.iter().any(|r| r.header("x-api-key") == Some(CANARY)));
    assert!(
        seen.contains("[REDACTED]") || seen.contains("HTTP 401"),
        "{seen}"
    );

    let debug = format!("{conns:?} {settings:?}");
    assert!(!debug.contains(CANARY), "{debug}");
    assert!(debug.contains("redacted"), "{debug}");
    let logs = capture.0.lock().clone();
    assert!(logs.contains("retrying"), "the retries were logged: {logs}");
    assert!(!logs.contains(CANARY), "{logs}");
}
