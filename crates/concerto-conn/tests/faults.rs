//! The fault matrix: what is retried and what is not, timeouts, resets, broken bodies,
//! and the retry budget. (The API-key canary is in `canary.rs`.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::server::{MockServer, Step, openai_stream};
use crate::support::{env, one, request};
use concerto_conn::{ConnectionSettings, HttpConnections};
use concerto_vm::host::{
    Backoff, ConnectionId, Connections, HostErrorKind, Program, ProviderFailure,
    ProviderFailureKind, RetryPolicy,
};
use serde_json::json;

const KEY: &str = "sk-test-faults-000";

fn retrying(base: &str, attempts: u32) -> Arc<Program> {
    one(
        "openai",
        json!({"provider": "openai", "api_key_env": "OPENAI_API_KEY", "base_url": base,
               "default_model": "gpt-4o-mini",
               "retry": {"max_attempts": attempts, "backoff": "none"}}),
    )
}

fn conns() -> HttpConnections {
    HttpConnections::new().with_env(env(&[("OPENAI_API_KEY", KEY)]))
}

fn error_body(message: &str) -> serde_json::Value {
    json!({"error": {"message": message, "type": "test_error"}})
}

#[tokio::test]
async fn unauthorized_is_not_retried() {
    let server = MockServer::start().await;
    server.respond_with(|_| Step::json(401, error_body("Invalid authentication")));
    let err = conns()
        .chat(
            &retrying(&server.base(), 3),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Failed);
    assert_eq!(
        err.message,
        "connection 'openai': HTTP 401 after 1 attempt: Invalid authentication"
    );
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn other_permanent_statuses_are_not_retried() {
    for status in [400u16, 403, 404, 422] {
        let server = MockServer::start().await;
        server.respond_with(move |_| Step::json(status, error_body("nope")));
        let err = conns()
            .chat(
                &retrying(&server.base(), 3),
                ConnectionId(0),
                request(None, "x"),
            )
            .await
            .unwrap_err();
        assert!(
            err.message
                .contains(&format!("HTTP {status} after 1 attempt")),
            "{}",
            err.message
        );
        assert_eq!(err.kind, HostErrorKind::Failed);
        assert_eq!(
            err.provider.as_deref(),
            Some(&ProviderFailure {
                kind: ProviderFailureKind::Provider,
                status: Some(status),
                retry_after_ms: None,
            })
        );
        assert_eq!(server.count(), 1, "status {status}");
    }
}

#[tokio::test]
async fn rate_limited_is_retried_after_retry_after() {
    let server = MockServer::start().await;
    server.script([
        Step::json(429, error_body("Rate limit reached")).header("retry-after", "1"),
        Step::openai_text("Channel is clear."),
    ]);
    let resp = conns()
        .chat(
            &retrying(&server.base(), 3),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap();
    assert_eq!(resp.text, "Channel is clear.");
    assert_eq!(resp.attempts, 2);
    let got = server.requests();
    assert_eq!(got.len(), 2);
    let gap = got[1].arrived - got[0].arrived;
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
    assert!(resp.latency_ms >= 1000, "{}", resp.latency_ms);
}

#[tokio::test]
async fn rate_limit_exhaustion_is_a_provider_failure_with_its_retry_after() {
    let server = MockServer::start().await;
    server.respond_with(|_| Step::json(429, error_body("Slow down")).header("retry-after", "0"));
    let err = conns()
        .chat(
            &retrying(&server.base(), 2),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Failed);
    assert_eq!(
        err.message,
        "connection 'openai': HTTP 429 after 2 attempts: Slow down"
    );
    assert_eq!(
        err.provider.as_deref(),
        Some(&ProviderFailure {
            kind: ProviderFailureKind::RateLimited,
            status: Some(429),
            retry_after_ms: Some(0),
        })
    );
    assert_eq!(server.count(), 2);
}

#[tokio::test]
async fn server_errors_are_retried() {
    for status in [500u16, 502, 503, 529, 408, 409] {
        let server = MockServer::start().await;
        server.script([
            Step::json(status, error_body("try again")),
            Step::openai_text("High tide at noon."),
        ]);
        let resp = conns()
            .chat(
                &retrying(&server.base(), 3),
                ConnectionId(0),
                request(None, "x"),
            )
            .await
            .unwrap();
        assert_eq!(resp.text, "High tide at noon.");
        assert_eq!(resp.attempts, 2, "status {status}");
        assert_eq!(server.count(), 2);
    }
    // Out of attempts: the last failure is reported.
    let server = MockServer::start().await;
    server.respond_with(|_| Step::json(500, error_body("boom")));
    let err = conns()
        .chat(
            &retrying(&server.base(), 3),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Failed);
    assert_eq!(
        err.message,
        "connection 'openai': HTTP 500 after 3 attempts: boom"
    );
    assert_eq!(server.count(), 3);
}

#[tokio::test]
async fn the_provider_can_veto_or_ask_for_a_retry() {
    let server = MockServer::start().await;
    server.script([
        Step::json(400, error_body("transient after all")).header("x-should-retry", "true"),
        Step::openai_text("ok"),
    ]);
    let resp = conns()
        .chat(
            &retrying(&server.base(), 3),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap();
    assert_eq!(resp.attempts, 2);
    let server = MockServer::start().await;
    server.script([Step::json(503, error_body("do not retry")).header("x-should-retry", "false")]);
    let err = conns()
        .chat(
            &retrying(&server.base(), 3),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap_err();
    assert!(err.message.contains("after 1 attempt"), "{}", err.message);
}

async fn wait_until(mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn timeouts_cancel_the_request_retry_and_end_in_a_timeout_error() {
    let server = MockServer::start().await;
    server.respond_with(|_| Step::openai_text("too late").delayed(Duration::from_secs(5)));
    let mut req = request(None, "x");
    req.timeout = Some(Duration::from_millis(200));
    let started = Instant::now();
    let err = conns()
        .chat(&retrying(&server.base(), 2), ConnectionId(0), req.clone())
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(err.kind, HostErrorKind::Timeout);
    assert_eq!(
        err.message,
        "connection 'openai': timed out after 2 attempts: no complete response within 200 ms"
    );
    assert_eq!(
        err.provider.as_deref().map(|p| p.kind),
        Some(ProviderFailureKind::Timeout)
    );
    // Both requests reached the server and were abandoned by the client.
    wait_until(|| server.requests().iter().all(|r| r.cancelled)).await;
    let got = server.requests();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|r| r.cancelled && r.finished.is_none()));

    // The connection's own timeout applies when the request has none; a retry succeeds.
    let server = MockServer::start().await;
    server.script([
        Step::openai_text("slow").delayed(Duration::from_secs(5)),
        Step::openai_text("fast"),
    ]);
    let conns = conns().with_settings(
        "openai",
        ConnectionSettings {
            timeout: Some(Duration::from_millis(200)),
            ..ConnectionSettings::default()
        },
    );
    let resp = conns
        .chat(
            &retrying(&server.base(), 2),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap();
    assert_eq!((resp.text.as_str(), resp.attempts), ("fast", 2));
}

#[tokio::test]
async fn the_timeout_covers_a_slow_stream() {
    let server = MockServer::start().await;
    let mut step = Step::sse(openai_stream(&["a", "b", "c", "d", "e"], 1, 1));
    if let crate::support::server::Body::Sse { gap, .. } = &mut step.body {
        *gap = Duration::from_millis(150);
    }
    server.script([step]);
    let mut req = request(None, "x");
    req.stream = Some(true);
    req.timeout = Some(Duration::from_millis(300));
    let err = conns()
        .chat(&retrying(&server.base(), 1), ConnectionId(0), req)
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Timeout, "{}", err.message);
    wait_until(|| server.requests().iter().all(|r| r.cancelled)).await;
    assert!(server.requests()[0].cancelled);
}

#[tokio::test]
async fn connection_resets_are_retried() {
    let server = MockServer::start().await;
    server.script([Step::reset(), Step::openai_text("after reset")]);
    let resp = conns()
        .chat(
            &retrying(&server.base(), 3),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap();
    assert_eq!((resp.text.as_str(), resp.attempts), ("after reset", 2));

    let server = MockServer::start().await;
    server.respond_with(|_| Step::reset());
    let err = conns()
        .chat(
            &retrying(&server.base(), 2),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Failed);
    assert!(
        err.message
            .starts_with("connection 'openai': request failed after 2 attempts: "),
        "{}",
        err.message
    );
    assert_eq!(server.count(), 2);

    // Nobody listening at all.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let err = conns()
        .chat(
            &retrying(&format!("http://127.0.0.1:{port}"), 2),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap_err();
    assert!(
        err.message.contains("request failed after 2 attempts"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn malformed_bodies_are_errors_and_not_retried() {
    let server = MockServer::start().await;
    server.script([Step::raw(200, "{\"choices\": [ this is not json")]);
    let err = conns()
        .chat(
            &retrying(&server.base(), 3),
            ConnectionId(0),
            request(None, "first"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Failed);
    assert!(
        err.message
            .starts_with("connection 'openai': invalid response after 1 attempt: "),
        "{}",
        err.message
    );
    assert_eq!(server.count(), 1);
    // A JSON body without the reply structure is malformed too.
    server.script([Step::json(200, json!({"unexpected": true}))]);
    let err = conns()
        .chat(
            &retrying(&server.base(), 3),
            ConnectionId(0),
            request(None, "second"),
        )
        .await
        .unwrap_err();
    assert!(err.message.contains("invalid response"), "{}", err.message);
    assert_eq!(server.count(), 2);
}

#[tokio::test]
async fn truncated_streams_are_errors() {
    let server = MockServer::start().await;
    let mut chunks = openai_stream(&["Hello", " wor"], 3, 2);
    chunks.truncate(3); // role, "Hello", " wor" — no finish, usage or [DONE]
    server.script([Step::sse(chunks)]);
    let mut req = request(None, "x");
    req.stream = Some(true);
    let err = conns()
        .chat(&retrying(&server.base(), 3), ConnectionId(0), req.clone())
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Failed);
    assert!(
        err.message
            .starts_with("connection 'openai': incomplete response after 1 attempt: "),
        "{}",
        err.message
    );
    assert!(err.message.contains("[DONE]"), "{}", err.message);
    assert_eq!(
        err.provider.as_deref().map(|p| (p.kind, p.status)),
        Some((ProviderFailureKind::Connection, None))
    );
    assert_eq!(server.count(), 1);
    // Cut inside an event.
    let mut chunks = openai_stream(&["Hello"], 3, 2);
    chunks.truncate(2);
    let half = chunks[1].len() / 2;
    chunks[1].truncate(half);
    server.script([Step::sse(chunks)]);
    let err = conns()
        .chat(&retrying(&server.base(), 3), ConnectionId(0), req)
        .await
        .unwrap_err();
    assert!(
        err.message.contains("incomplete response"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn the_retry_budget_is_shared_and_runs_out() {
    let server = MockServer::start().await;
    server.respond_with(|_| Step::json(500, error_body("down")));
    let conns = conns().with_retry_budget(2);
    let program = retrying(&server.base(), 5);
    let err = conns
        .chat(&program, ConnectionId(0), request(None, "x"))
        .await
        .unwrap_err();
    // The budget stops the retrying, not the program: the call ends with the provider's
    // failure, which the program gets as an `AgentError`.
    assert_eq!(err.kind, HostErrorKind::Failed);
    assert_eq!(
        err.provider.as_deref(),
        Some(&ProviderFailure {
            kind: ProviderFailureKind::Provider,
            status: Some(500),
            retry_after_ms: None,
        })
    );
    assert!(
        err.message
            .starts_with("connection 'openai': the retry budget is exhausted (all 2 retries"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("HTTP 500 after 3 attempts: down"),
        "{}",
        err.message
    );
    assert_eq!(server.count(), 3);
    // The next call gets no retry at all.
    let err = conns
        .chat(&program, ConnectionId(0), request(None, "x"))
        .await
        .unwrap_err();
    assert!(err.message.contains("retry budget"), "{}", err.message);
    assert_eq!(server.count(), 4);
    // A new run starts with the whole budget again.
    conns.begin_run();
    let err = conns
        .chat(&program, ConnectionId(0), request(None, "x"))
        .await
        .unwrap_err();
    assert!(err.message.contains("retry budget"), "{}", err.message);
    assert_eq!(server.count(), 7, "two retries again after begin_run");
}

/// A 429 that outlasts the retries is a provider failure the program can handle, with the
/// provider's retry-after, also when the run's retry budget is what ended the retrying.
#[tokio::test]
async fn rate_limiting_that_spends_the_retry_budget_is_still_a_rate_limited_failure() {
    let server = MockServer::start().await;
    server
        .respond_with(|_| Step::json(429, error_body("Slow down")).header("retry-after-ms", "40"));
    let conns = conns().with_retry_budget(1);
    let err = conns
        .chat(
            &retrying(&server.base(), 5),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Failed, "{}", err.message);
    assert_eq!(
        err.provider.as_deref(),
        Some(&ProviderFailure {
            kind: ProviderFailureKind::RateLimited,
            status: Some(429),
            retry_after_ms: Some(40),
        })
    );
    assert!(
        err.message.contains("the retry budget is exhausted")
            && err.message.contains("HTTP 429 after 2 attempts: Slow down"),
        "{}",
        err.message
    );
    assert_eq!(server.count(), 2);
}

#[tokio::test]
async fn the_agent_retry_policy_wins_over_the_connection() {
    let server = MockServer::start().await;
    server.respond_with(|_| Step::json(503, error_body("busy")));
    let mut req = request(None, "x");
    req.retry = Some(RetryPolicy {
        max_attempts: 4,
        backoff: Backoff::Linear,
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(30),
    });
    let err = conns()
        .chat(&retrying(&server.base(), 1), ConnectionId(0), req)
        .await
        .unwrap_err();
    assert!(err.message.contains("after 4 attempts"), "{}", err.message);
    let got = server.requests();
    assert_eq!(got.len(), 4);
    // Linear: 20 ms, then 40 ms capped at 30 ms, then 30 ms.
    for (pair, at_least) in got.windows(2).zip([20u64, 30, 30]) {
        let gap = pair[1].arrived - pair[0].arrived;
        assert!(gap >= Duration::from_millis(at_least), "{gap:?}");
    }
}
