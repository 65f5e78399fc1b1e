//! Where a call's time went ([`CallTiming`]), measured against a loopback server whose
//! delays are known: the response head held back, stream chunks spaced apart, a
//! concurrency limit that makes a call wait, a retry delay, and a pooled connection
//! reused by the next call.

use std::sync::Arc;
use std::time::Duration;

use crate::support::server::{Body, MockServer, Step, openai_stream};
use crate::support::{env, one, request};
use concerto_conn::{ConnectionSettings, HttpConnections};
use concerto_vm::host::{CallTiming, ChatRequest, ChatResponse, ConnectionId, Connections};
use serde_json::json;

const MS: u64 = 1000;

fn conns(max_concurrent: Option<u32>) -> HttpConnections {
    HttpConnections::new()
        .with_env(env(&[("OPENAI_API_KEY", "sk-timing")]))
        .with_settings(
            "openai",
            ConnectionSettings {
                max_concurrent,
                ..ConnectionSettings::default()
            },
        )
}

fn program(base: &str, extra: serde_json::Value) -> Arc<concerto_vm::host::Program> {
    let mut config = json!({"provider": "openai", "api_key_env": "OPENAI_API_KEY",
                            "base_url": base, "default_model": "gpt-4o-mini"});
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    one("openai", config)
}

/// A stream whose head comes after `head` and whose chunks come `gap` apart.
fn slow_stream(head: Duration, gap: Duration) -> Step {
    let mut step = Step::sse(openai_stream(&["Harbour ", "is ", "clear."], 9, 3)).delayed(head);
    if let Body::Sse { gap: g, .. } = &mut step.body {
        *g = gap;
    }
    step
}

/// The parts never exceed the whole: the limit waits and the answering attempt's wait for
/// its head fit in the total, the connection is made before the head arrives, the first
/// token comes after the head and before the end, and the overhead is what is left.
fn assert_adds_up(t: &CallTiming) {
    let ttfb = t.ttfb_us.expect("an HTTP reply has a time to first byte");
    assert!(t.queue_us + ttfb <= t.total_us, "{t:?}");
    if let Some(connect) = t.connect_us {
        assert!(connect <= ttfb, "{t:?}");
    }
    if let Some(first) = t.first_token_us {
        assert!(ttfb <= first && t.queue_us + first <= t.total_us, "{t:?}");
    }
    assert!(t.queue_us + ttfb + t.overhead_us <= t.total_us, "{t:?}");
}

async fn call(
    conns: &HttpConnections,
    program: &Arc<concerto_vm::host::Program>,
    stream: bool,
) -> ChatResponse {
    let mut req: ChatRequest = request(None, "Is the harbour clear?");
    req.stream = Some(stream);
    conns.chat(program, ConnectionId(0), req).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_call_times_its_head_first_token_and_connection_then_reuses_it() {
    let server = MockServer::start().await;
    server.respond_with(|_| slow_stream(Duration::from_millis(150), Duration::from_millis(80)));
    let conns = conns(None);
    let program = program(&server.base(), json!({}));

    let first = call(&conns, &program, true).await;
    assert_eq!(first.text, "Harbour is clear.");
    let t = first.timing.expect("the HTTP layer times its calls");
    assert_adds_up(&t);
    assert!(
        t.connect_us.is_some(),
        "the first call made a connection: {t:?}"
    );
    let ttfb = t.ttfb_us.unwrap();
    assert!(ttfb >= 150 * MS, "the head was held back 150 ms: {t:?}");
    // The role-only first chunk carries no content; "Harbour " is the second.
    let first_token = t
        .first_token_us
        .expect("a streamed reply has a first token");
    assert!(first_token >= ttfb + 80 * MS, "{t:?}");
    assert!(
        t.total_us >= first_token + 80 * MS,
        "more chunks followed: {t:?}"
    );
    assert_eq!(t.queue_us, 0, "no limit, no wait: {t:?}");

    // The server keeps the connection open: the next call goes over it.
    let second = call(&conns, &program, true).await;
    let t = second.timing.unwrap();
    assert_adds_up(&t);
    assert_eq!(t.connect_us, None, "a pooled connection was reused: {t:?}");
    assert_eq!(server.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_reply_has_no_first_token_time() {
    let server = MockServer::start().await;
    server.respond_with(|_| Step::openai_text("Clear.").delayed(Duration::from_millis(60)));
    let conns = conns(None);
    let program = program(&server.base(), json!({}));
    let t = call(&conns, &program, false).await.timing.unwrap();
    assert_adds_up(&t);
    assert_eq!(t.first_token_us, None, "{t:?}");
    assert!(t.ttfb_us.unwrap() >= 60 * MS, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_held_by_the_concurrency_limit_counts_its_wait_as_queue_time() {
    let server = MockServer::start().await;
    server.respond_with(|_| Step::openai_text("Clear.").delayed(Duration::from_millis(200)));
    let conns = Arc::new(conns(Some(1)));
    let program = program(&server.base(), json!({}));
    let a = tokio::spawn({
        let (conns, program) = (conns.clone(), program.clone());
        async move { call(&conns, &program, false).await }
    });
    let b = tokio::spawn({
        let (conns, program) = (conns.clone(), program.clone());
        async move { call(&conns, &program, false).await }
    });
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let (ta, tb) = (a.timing.unwrap(), b.timing.unwrap());
    assert_adds_up(&ta);
    assert_adds_up(&tb);
    let (waited, other) = if ta.queue_us > tb.queue_us {
        (ta, tb)
    } else {
        (tb, ta)
    };
    assert!(
        waited.queue_us >= 150 * MS,
        "one call waited for the other: {waited:?}"
    );
    assert!(other.queue_us < 150 * MS, "{other:?}");
    assert!(waited.total_us >= waited.queue_us + 200 * MS, "{waited:?}");
    assert_eq!(server.max_in_flight(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_delays_and_failed_attempts_are_not_counted_as_overhead() {
    let server = MockServer::start().await;
    server.script([
        Step::json(503, json!({"error": {"message": "busy"}}))
            .header("retry-after-ms", "200")
            .delayed(Duration::from_millis(100)),
        Step::openai_text("Clear.").delayed(Duration::from_millis(50)),
    ]);
    let conns = conns(None);
    let program = program(
        &server.base(),
        json!({"retry": {"max_attempts": 2, "backoff": "none"}}),
    );
    let reply = call(&conns, &program, false).await;
    assert_eq!(reply.attempts, 2);
    let t = reply.timing.unwrap();
    assert_adds_up(&t);
    // 100 ms refused, 200 ms delay, 50 ms to the answer's head: 350 ms that are not the
    // runtime's own.
    assert!(t.total_us >= 350 * MS, "{t:?}");
    assert!(t.overhead_us + 350 * MS <= t.total_us, "{t:?}");
    let ttfb = t.ttfb_us.unwrap();
    assert!(
        (50 * MS..100 * MS).contains(&ttfb),
        "the answering attempt's head: {t:?}"
    );
}
