//! Emit-await: handlers, prefix handlers, timeout, errors naming the channel, and no
//! overtaking of batched emits.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{SharedBuf, block_on, int, recorded_hub};
use concerto_emit::{AwaitHandler, DEFAULT_AWAIT_TIMEOUT, Delivery, EmitHub, JsonLinesSink};
use concerto_vm::Value;
use concerto_vm::host::{EmitSink, HostError, HostErrorKind};

fn answer(v: Value) -> AwaitHandler {
    Arc::new(move |_payload: Value| {
        let v = v.clone();
        Box::pin(async move { Ok(v) })
    })
}

fn echo() -> AwaitHandler {
    Arc::new(|payload: Value| Box::pin(async move { Ok(payload) }))
}

#[tokio::test]
async fn the_handler_answers_with_a_value() {
    let hub = EmitHub::new();
    hub.on_emit("ask", echo());
    let reply = hub.emit_await("ask", Value::str("hi")).await.unwrap();
    assert_eq!(reply.as_str(), Some("hi"));
}

#[tokio::test]
async fn a_missing_handler_fails_naming_the_channel_and_how_to_register_one() {
    let hub = EmitHub::new();
    let err = hub
        .emit_await("request:user_input", Value::Nil)
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Failed);
    assert!(
        err.message.contains("`request:user_input`"),
        "{}",
        err.message
    );
    assert!(
        err.message
            .contains("Runtime::on_emit(\"request:user_input\", handler)"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn a_handler_error_keeps_its_kind_and_names_the_channel() {
    let hub = EmitHub::new();
    hub.on_emit(
        "tool:db",
        Arc::new(|_: Value| Box::pin(async { Err(HostError::limit("quota exceeded")) })),
    );
    let err = hub.emit_await("tool:db", Value::Nil).await.unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Limit);
    assert_eq!(
        err.message,
        "emit-await handler for channel `tool:db` failed: quota exceeded"
    );
}

#[tokio::test]
async fn a_panicking_handler_becomes_an_error() {
    let hub = EmitHub::new();
    hub.on_emit(
        "bad",
        Arc::new(|_: Value| {
            Box::pin(async {
                tokio::task::yield_now().await;
                panic!("handler blew up")
            })
        }),
    );
    hub.on_emit("worse", Arc::new(|_: Value| panic!("before any future")));
    let err = hub.emit_await("bad", Value::Nil).await.unwrap_err();
    assert!(err.message.contains("`bad`") && err.message.contains("handler blew up"));
    let err = hub.emit_await("worse", Value::Nil).await.unwrap_err();
    assert!(err.message.contains("`worse`") && err.message.contains("before any future"));
}

#[tokio::test(start_paused = true)]
async fn a_slow_handler_times_out_naming_the_channel_and_the_timeout() {
    let hub = EmitHub::new();
    assert_eq!(hub.await_timeout(), Some(DEFAULT_AWAIT_TIMEOUT));
    assert_eq!(DEFAULT_AWAIT_TIMEOUT, Duration::from_secs(30));
    hub.on_emit(
        "approval",
        Arc::new(|_: Value| Box::pin(std::future::pending())),
    );
    let started = tokio::time::Instant::now();
    let err = hub.emit_await("approval", Value::Nil).await.unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Timeout);
    assert_eq!(
        err.message,
        "emit-await on channel `approval` got no reply within 30 s (EmitHub::set_await_timeout)"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(30));

    hub.set_await_timeout(Some(Duration::from_millis(250)));
    let err = hub.emit_await("approval", Value::Nil).await.unwrap_err();
    assert!(err.message.contains("within 250 ms"), "{}", err.message);
}

#[tokio::test(start_paused = true)]
async fn without_a_timeout_the_await_waits_as_long_as_the_handler_takes() {
    let hub = EmitHub::new();
    hub.set_await_timeout(None);
    hub.on_emit(
        "human_review",
        Arc::new(|_: Value| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Value::str("approved"))
            })
        }),
    );
    let reply = hub.emit_await("human_review", Value::Nil).await.unwrap();
    assert_eq!(reply.as_str(), Some("approved"));
}

#[tokio::test(start_paused = true)]
async fn a_handler_within_the_timeout_answers() {
    let hub = EmitHub::new();
    hub.set_await_timeout(Some(Duration::from_secs(5)));
    hub.on_emit(
        "q",
        Arc::new(|_: Value| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(4)).await;
                Ok(Value::Int(42))
            })
        }),
    );
    assert_eq!(
        hub.emit_await("q", Value::Nil).await.unwrap().as_int(),
        Some(42)
    );
}

#[test]
fn outside_tokio_a_timeout_fails_clearly_and_no_timeout_works() {
    let hub = EmitHub::new();
    hub.on_emit("q", answer(int(7)));
    let err = block_on(hub.emit_await("q", Value::Nil)).unwrap_err();
    assert!(err.message.contains("`q`") && err.message.contains("Tokio runtime"));
    assert!(
        err.message.contains("set_await_timeout(None)"),
        "{}",
        err.message
    );
    hub.set_await_timeout(None);
    let reply = block_on(hub.emit_await("q", Value::Nil)).unwrap();
    assert_eq!(reply.as_int(), Some(7));
}

#[tokio::test]
async fn prefix_handlers_answer_channels_without_their_own_and_the_longest_wins() {
    let hub = EmitHub::new();
    hub.on_emit_prefix("tool:", answer(Value::str("tool")));
    hub.on_emit_prefix("tool:db:", answer(Value::str("db")));
    hub.on_emit("tool:db:query", answer(Value::str("query")));
    let ask = |ch: &'static str| hub.emit_await(ch, Value::Nil);
    assert_eq!(ask("tool:read_file").await.unwrap().as_str(), Some("tool"));
    assert_eq!(ask("tool:db:insert").await.unwrap().as_str(), Some("db"));
    assert_eq!(ask("tool:db:query").await.unwrap().as_str(), Some("query"));
    assert!(ask("other").await.is_err());
}

#[tokio::test]
async fn registering_again_replaces_the_handler() {
    let hub = EmitHub::new();
    hub.on_emit("q", answer(int(1)));
    hub.on_emit("q", answer(int(2)));
    hub.on_emit_prefix("p", answer(int(3)));
    hub.on_emit_prefix("p", answer(int(4)));
    assert_eq!(
        hub.emit_await("q", Value::Nil).await.unwrap().as_int(),
        Some(2)
    );
    assert_eq!(
        hub.emit_await("px", Value::Nil).await.unwrap().as_int(),
        Some(4)
    );
}

/// The host must have seen every earlier (batched) emit, on its listeners and in its sink
/// output, when its handler is asked.
#[tokio::test]
async fn batched_emits_are_delivered_before_the_handler_runs() {
    let (hub, rec) = recorded_hub();
    let buf = SharedBuf::default();
    hub.add_sink(Arc::new(JsonLinesSink::new(buf.clone())));
    hub.set_delivery(Delivery::Batch { max_batch: 0 });
    let seen_by_handler = {
        let rec = rec.clone();
        let buf = buf.clone();
        move |_: Value| {
            let seen = (rec.channels().join(","), buf.text().lines().count());
            Box::pin(async move {
                Ok(Value::array(vec![
                    Value::str(seen.0),
                    Value::Int(seen.1 as i64),
                ]))
            }) as concerto_vm::host::BoxFuture<Result<Value, HostError>>
        }
    };
    hub.on_emit("ask", Arc::new(seen_by_handler));
    hub.emit("first", &int(1)).unwrap();
    hub.emit("second", &int(2)).unwrap();
    assert_eq!(rec.len(), 0);
    let reply = hub.emit_await("ask", Value::Nil).await.unwrap();
    assert_eq!(reply.to_json(), serde_json::json!(["first,second", 2]));
    assert_eq!(hub.queued(), 0);
    assert_eq!(hub.emit_count(), 3, "the await counts as an emit");
}
