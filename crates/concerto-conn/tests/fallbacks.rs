//! Fallbacks: after a connection's retries are spent on a failure its policy lists, the
//! next fallback (another connection and/or model) is tried, within the retry budget.

use std::sync::Arc;

use crate::support::server::{MockServer, Step, openai_reply};
use crate::support::{env, program, request};
use concerto_conn::{ConnectionSettings, Fallback, FallbackOn, HttpConnections};
use concerto_vm::host::{
    ConnectionId, Connections, HostErrorKind, Program, ProviderFailure, ProviderFailureKind,
};
use serde_json::json;

const KEY: &str = "sk-test-fallbacks-000";

fn error_body(message: &str) -> serde_json::Value {
    json!({"error": {"message": message, "type": "test_error"}})
}

/// A program with connection `primary` (two attempts, no backoff) on `primary_base` and
/// connection `backup` (one attempt, default model `backup-model`) on `backup_base`.
fn two_connections(primary_base: &str, backup_base: &str) -> Arc<Program> {
    program(json!([
        {"name": "primary", "config": {"provider": "openai", "base_url": primary_base,
            "default_model": "gpt-4o", "retry": {"max_attempts": 2, "backoff": "none"}}},
        {"name": "backup", "config": {"provider": "openai", "base_url": backup_base,
            "default_model": "backup-model"}}
    ]))
}

fn fallback(connection: Option<&str>, model: Option<&str>) -> Fallback {
    Fallback {
        connection: connection.map(str::to_string),
        model: model.map(str::to_string),
    }
}

fn layer(primary: ConnectionSettings) -> HttpConnections {
    HttpConnections::new()
        .with_env(env(&[("OPENAI_API_KEY", KEY)]))
        .with_settings("primary", primary)
}

fn falls_back_to(fallbacks: Vec<Fallback>) -> ConnectionSettings {
    ConnectionSettings {
        fallbacks,
        ..ConnectionSettings::default()
    }
}

#[tokio::test]
async fn rate_limited_then_the_fallback_answers_and_says_so() {
    let primary = MockServer::start().await;
    primary
        .respond_with(|_| Step::json(429, error_body("Slow down")).header("retry-after-ms", "5"));
    let backup = MockServer::start().await;
    backup.script([Step::json(
        200,
        openai_reply("From the backup.", "backup-model", 10, 4),
    )]);
    let conns = layer(falls_back_to(vec![fallback(Some("backup"), None)]));
    let reply = conns
        .chat(
            &two_connections(&primary.base(), &backup.base()),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap();
    assert_eq!(reply.text, "From the backup.");
    assert_eq!(reply.connection.as_deref(), Some("backup"));
    assert_eq!(reply.model, "backup-model");
    assert_eq!(reply.attempts, 3, "two on primary, one on backup");
    assert_eq!((primary.count(), backup.count()), (2, 1));
    // Without a model of its own the fallback asks its connection's default model.
    assert_eq!(backup.requests()[0].body["model"], "backup-model");
}

#[tokio::test]
async fn server_errors_on_both_end_with_both_failures_and_the_last_ones_details() {
    let primary = MockServer::start().await;
    primary.respond_with(|_| Step::json(503, error_body("primary down")));
    let backup = MockServer::start().await;
    backup.respond_with(|_| Step::json(502, error_body("backup down")));
    let conns = layer(falls_back_to(vec![fallback(Some("backup"), None)]));
    let err = conns
        .chat(
            &two_connections(&primary.base(), &backup.base()),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Failed);
    assert_eq!(
        err.message,
        "connection 'primary': HTTP 503 after 2 attempts: primary down; then fallback 1 \
         (connection 'backup'): connection 'backup': HTTP 502 after 1 attempt: backup down"
    );
    assert_eq!(
        err.provider.as_deref(),
        Some(&ProviderFailure {
            kind: ProviderFailureKind::Provider,
            status: Some(502),
            retry_after_ms: None,
        })
    );
    assert_eq!((primary.count(), backup.count()), (2, 1));
}

#[tokio::test]
async fn a_fallback_with_another_model_succeeds_on_the_same_or_a_host_only_connection() {
    // The same connection, another model: the server refuses `gpt-4o` only.
    let server = MockServer::start().await;
    server.respond_with(|r| {
        if r.body["model"] == "gpt-4o" {
            Step::json(500, error_body("gpt-4o is overloaded"))
        } else {
            let model = r.body["model"].as_str().unwrap_or_default().to_string();
            Step::json(200, openai_reply("Smaller but here.", &model, 9, 3))
        }
    });
    let conns = layer(falls_back_to(vec![fallback(None, Some("gpt-4o-mini"))]));
    let reply = conns
        .chat(
            &two_connections(&server.base(), "http://127.0.0.1:9"),
            ConnectionId(0),
            request(Some("gpt-4o"), "x"),
        )
        .await
        .unwrap();
    assert_eq!(reply.text, "Smaller but here.");
    assert_eq!(reply.model, "gpt-4o-mini");
    assert_eq!(reply.connection, None, "the named connection answered");
    assert!(
        reply.cost_usd.is_some(),
        "priced as the model that answered"
    );
    assert_eq!(server.count(), 3);

    // A connection only the host configured (the program does not declare `spare`).
    let failing = MockServer::start().await;
    failing.respond_with(|_| Step::reset());
    let spare = MockServer::start().await;
    spare.script([Step::json(
        200,
        openai_reply("Spare speaking.", "spare-model", 5, 2),
    )]);
    let conns = layer(falls_back_to(vec![fallback(
        Some("spare"),
        Some("spare-model"),
    )]))
    .with_settings(
        "spare",
        ConnectionSettings {
            base_url: Some(spare.base()),
            api_key: Some("sk-spare-key".into()),
            ..ConnectionSettings::default()
        },
    );
    let reply = conns
        .chat(
            &two_connections(&failing.base(), "http://127.0.0.1:9"),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap();
    assert_eq!(reply.text, "Spare speaking.");
    assert_eq!(
        (reply.connection.as_deref(), reply.model.as_str()),
        (Some("spare"), "spare-model")
    );
    let got = &spare.requests()[0];
    assert_eq!(got.body["model"], "spare-model");
    assert_eq!(got.header("authorization"), Some("Bearer sk-spare-key"));
}

#[tokio::test]
async fn an_exhausted_retry_budget_stops_before_the_fallback() {
    let primary = MockServer::start().await;
    primary
        .respond_with(|_| Step::json(429, error_body("Slow down")).header("retry-after-ms", "5"));
    let backup = MockServer::start().await;
    backup.respond_with(|_| Step::openai_text("never asked"));
    // One retry in the whole budget: the primary's second attempt takes it.
    let conns = layer(falls_back_to(vec![fallback(Some("backup"), None)])).with_retry_budget(1);
    let err = conns
        .chat(
            &two_connections(&primary.base(), &backup.base()),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Failed, "{}", err.message);
    assert_eq!(
        err.message,
        "connection 'primary': HTTP 429 after 2 attempts: Slow down; fallback 1 (connection \
         'backup') was not tried: the retry budget is exhausted (all 1 retries allowed to this \
         connection layer are used up)"
    );
    assert_eq!(
        err.provider.as_deref(),
        Some(&ProviderFailure {
            kind: ProviderFailureKind::RateLimited,
            status: Some(429),
            retry_after_ms: Some(5),
        })
    );
    assert_eq!((primary.count(), backup.count()), (2, 0));
    // With a budget that allows it, the move to the fallback takes one retry.
    let conns = layer(falls_back_to(vec![fallback(Some("backup"), None)])).with_retry_budget(2);
    let reply = conns
        .chat(
            &two_connections(&primary.base(), &backup.base()),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap();
    assert_eq!(reply.connection.as_deref(), Some("backup"));
}

#[tokio::test]
async fn request_errors_and_unlisted_kinds_never_fall_back() {
    let backup = MockServer::start().await;
    backup.respond_with(|_| Step::openai_text("never asked"));
    // A 4xx refusal of the request itself.
    let primary = MockServer::start().await;
    primary.respond_with(|_| Step::json(400, error_body("bad request")));
    let conns = layer(falls_back_to(vec![fallback(Some("backup"), None)]));
    let err = conns
        .chat(
            &two_connections(&primary.base(), &backup.base()),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.message,
        "connection 'primary': HTTP 400 after 1 attempt: bad request"
    );
    // A 429 when the policy lists only server errors.
    let limited = MockServer::start().await;
    limited.respond_with(|_| Step::json(429, error_body("Slow down")));
    let conns = layer(ConnectionSettings {
        fallbacks: vec![fallback(Some("backup"), None)],
        fallback_on: vec![FallbackOn::ServerError],
        ..ConnectionSettings::default()
    });
    let err = conns
        .chat(
            &two_connections(&limited.base(), &backup.base()),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.provider.map(|p| p.kind),
        Some(ProviderFailureKind::RateLimited)
    );
    assert_eq!(backup.count(), 0);
}

#[tokio::test]
async fn timeouts_fall_back_but_malformed_replies_and_a_fallbacks_own_fallbacks_do_not() {
    use std::time::Duration;
    let backup = MockServer::start().await;
    backup.respond_with(|_| Step::json(503, error_body("backup down")));
    // A timeout on the primary falls back.
    let slow = MockServer::start().await;
    slow.respond_with(|_| Step::openai_text("too late").delayed(Duration::from_secs(5)));
    let conns = layer(ConnectionSettings {
        timeout: Some(Duration::from_millis(100)),
        retry: Some(concerto_vm::host::RetryPolicy::default()),
        fallbacks: vec![fallback(Some("backup"), None)],
        ..ConnectionSettings::default()
    })
    // The backup's own fallback is not followed from the primary's call.
    .with_settings(
        "backup",
        falls_back_to(vec![fallback(Some("spare"), Some("spare-model"))]),
    )
    .with_settings(
        "spare",
        ConnectionSettings {
            base_url: Some("http://127.0.0.1:9".into()),
            api_key: Some("sk-spare".into()),
            ..ConnectionSettings::default()
        },
    );
    let err = conns
        .chat(
            &two_connections(&slow.base(), &backup.base()),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap_err();
    assert!(
        err.message
            .starts_with("connection 'primary': timed out after 1 attempt")
            && err
                .message
                .ends_with("HTTP 503 after 1 attempt: backup down"),
        "{}",
        err.message
    );
    assert_eq!((slow.count(), backup.count()), (1, 1));
    // A malformed reply is not a reason to ask elsewhere.
    let garbled = MockServer::start().await;
    garbled.respond_with(|_| Step::raw(200, "not json"));
    let conns = layer(falls_back_to(vec![fallback(Some("backup"), None)]));
    let err = conns
        .chat(
            &two_connections(&garbled.base(), &backup.base()),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap_err();
    assert!(err.message.contains("invalid response"), "{}", err.message);
    assert_eq!(backup.count(), 1, "the backup was not asked again");
}

#[tokio::test]
async fn a_fallback_that_cannot_be_used_fails_loudly_naming_it() {
    let primary = MockServer::start().await;
    primary.respond_with(|_| Step::json(503, error_body("down")));
    let conns = layer(falls_back_to(vec![fallback(Some("nowhere"), None)]));
    let err = conns
        .chat(
            &two_connections(&primary.base(), "http://127.0.0.1:9"),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap_err();
    assert!(
        err.message.ends_with(
            "fallback 1 (connection 'nowhere') could not be used: connection 'nowhere' is neither a \
             connection of the program nor one the host configured"
        ),
        "{}",
        err.message
    );
    // A fallback naming neither a connection nor a model.
    let conns = layer(falls_back_to(vec![fallback(None, None)]));
    let err = conns
        .chat(
            &two_connections(&primary.base(), "http://127.0.0.1:9"),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap_err();
    assert!(
        err.message
            .ends_with("fallback 1 names neither a connection nor a model"),
        "{}",
        err.message
    );
}
