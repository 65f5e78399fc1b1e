//! Connection limits seen from the server: concurrent calls, requests and tokens per
//! minute, and a property test that no limit is ever exceeded.
//!
//! Time is virtual: the rate tests run on a current-thread tokio runtime with paused time
//! (`start_paused`), so the server's delays and the limiter's waits advance the clock
//! instantly when nothing else can run, and minutes pass in milliseconds. Server and client
//! share the runtime, so the server log's instants are on the same virtual clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::support::server::{MockServer, Received, Step, openai_reply};
use crate::support::{env, one, request};
use concerto_conn::{ConnectionSettings, HttpConnections};
use concerto_vm::host::{ChatRequest, ConnectionId, Connections, HostErrorKind, Program};
use parking_lot::Mutex;
use proptest::prelude::*;
use serde_json::json;
use tokio::time::Instant;

fn program(base: &str) -> Arc<Program> {
    one(
        "openai",
        json!({"provider": "openai", "api_key_env": "OPENAI_API_KEY", "base_url": base,
               "default_model": "gpt-4o-mini"}),
    )
}

fn limited(rpm: Option<u32>, tpm: Option<u32>, concurrent: Option<u32>) -> HttpConnections {
    HttpConnections::new()
        .with_env(env(&[("OPENAI_API_KEY", "sk-limits")]))
        .with_settings(
            "openai",
            ConnectionSettings {
                requests_per_minute: rpm,
                tokens_per_minute: tpm,
                max_concurrent: concurrent,
                // Long enough never to fire while virtual minutes pass.
                timeout: Some(Duration::from_secs(24 * 3600)),
                ..ConnectionSettings::default()
            },
        )
}

fn offsets(got: &[Received]) -> Vec<Duration> {
    let first = got.iter().map(|r| r.arrived).min().unwrap();
    let mut out: Vec<Duration> = got.iter().map(|r| r.arrived - first).collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_limit_holds_at_the_server() {
    let server = MockServer::start().await;
    server.respond_with(|_| Step::openai_text("ok").delayed(Duration::from_millis(100)));
    let conns: Arc<dyn Connections> = Arc::new(limited(None, None, Some(3)));
    let program = program(&server.base());
    let calls: Vec<_> = (0..12)
        .map(|i| {
            let conns = Arc::clone(&conns);
            let program = Arc::clone(&program);
            tokio::spawn(async move {
                conns
                    .chat(&program, ConnectionId(0), request(None, &format!("{i}")))
                    .await
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(server.count(), 12);
    assert_eq!(server.max_in_flight(), 3);
}

#[tokio::test(start_paused = true)]
async fn requests_per_minute_queue_instead_of_failing() {
    let server = MockServer::start().await;
    server.respond_with(|_| Step::openai_text("ok"));
    let conns: Arc<dyn Connections> = Arc::new(limited(Some(2), None, None));
    let program = program(&server.base());
    let start = Instant::now();
    let calls: Vec<_> = (0..5)
        .map(|i| {
            let conns = Arc::clone(&conns);
            let program = Arc::clone(&program);
            tokio::spawn(async move {
                conns
                    .chat(&program, ConnectionId(0), request(None, &format!("{i}")))
                    .await
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let minute = Duration::from_secs(60);
    assert_eq!(
        offsets(&server.requests()),
        vec![Duration::ZERO, Duration::ZERO, minute, minute, minute * 2]
    );
    assert!(Instant::now() - start >= minute * 2);
}

#[tokio::test(start_paused = true)]
async fn tokens_per_minute_reserve_then_settle_to_real_usage() {
    let server = MockServer::start().await;
    // Every reply really used 20 tokens.
    server.respond_with(|_| Step::json(200, openai_reply("ok", "gpt-4o-mini", 10, 10)));
    let conns = limited(None, Some(1000), None);
    let program = program(&server.base());
    // Each call reserves its estimate plus max_tokens = 400, so without settling only two
    // would fit in a minute; settled to 20 tokens each, all ten go at once.
    for i in 0..10 {
        let mut req = request(None, &format!("call {i}"));
        req.max_tokens = Some(400);
        conns.chat(&program, ConnectionId(0), req).await.unwrap();
    }
    assert!(offsets(&server.requests()).iter().all(|d| d.is_zero()));

    // A reply that used more than it reserved is charged in full: the window is now over
    // the limit and the next call waits for it to drain.
    server.respond_with(|_| Step::json(200, openai_reply("ok", "gpt-4o-mini", 10, 990)));
    let mut req = request(None, "big");
    req.max_tokens = Some(100);
    conns.chat(&program, ConnectionId(0), req).await.unwrap();
    let before = Instant::now();
    let mut req = request(None, "next");
    req.max_tokens = Some(100);
    conns.chat(&program, ConnectionId(0), req).await.unwrap();
    assert!(Instant::now() - before >= Duration::from_secs(59));
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_the_token_limit_fails_at_once() {
    let server = MockServer::start().await;
    server.respond_with(|_| Step::openai_text("ok"));
    let conns = limited(Some(10), Some(500), Some(2));
    let mut req = request(None, "hello");
    req.max_tokens = Some(600);
    let err = conns
        .chat(&program(&server.base()), ConnectionId(0), req)
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Limit);
    assert!(
        err.message
            .starts_with("connection 'openai': the request needs about 6"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("limit of 500 tokens per minute"),
        "{}",
        err.message
    );
    assert_eq!(server.count(), 0);
}

#[tokio::test(start_paused = true)]
async fn limits_from_the_program_configuration() {
    let server = MockServer::start().await;
    server.respond_with(|_| Step::openai_text("ok"));
    let program = one(
        "openai",
        json!({"provider": "openai", "api_key_env": "OPENAI_API_KEY", "base_url": server.base(),
               "default_model": "gpt-4o-mini", "timeout": 86400,
               "rate_limit": {"requests_per_minute": 1, "concurrent_requests": 1}}),
    );
    let conns = HttpConnections::new().with_env(env(&[("OPENAI_API_KEY", "k-1234")]));
    for i in 0..3 {
        conns
            .chat(&program, ConnectionId(0), request(None, &format!("{i}")))
            .await
            .unwrap();
    }
    let minute = Duration::from_secs(60);
    assert_eq!(
        offsets(&server.requests()),
        vec![Duration::ZERO, minute, minute * 2]
    );
}

// ---------------------------------------------------------------------------------------
// Property: for random limits and random bursts, the server never sees more than
// `max_concurrent` requests in flight, nor more than `requests_per_minute` requests or
// `tokens_per_minute` tokens in any 60 s window.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Burst {
    /// Virtual milliseconds after the start when the call is made.
    start_ms: u64,
    /// Characters of the user message (drives the estimated input).
    chars: usize,
    max_tokens: u64,
    /// The share (percent) of the estimated input / of max_tokens the reply reports.
    input_pct: u64,
    output_pct: u64,
    /// How long the server takes.
    delay_ms: u64,
}

fn burst() -> impl Strategy<Value = Burst> {
    (
        0u64..150_000,
        0usize..2000,
        1u64..400,
        0u64..=100,
        0u64..=100,
        0u64..20_000,
    )
        .prop_map(
            |(start_ms, chars, max_tokens, input_pct, output_pct, delay_ms)| Burst {
                start_ms,
                chars,
                max_tokens,
                input_pct,
                output_pct,
                delay_ms,
            },
        )
}

/// Call id → (input tokens, output tokens, server delay in ms).
type Plan = HashMap<String, (u64, u64, u64)>;

/// The server log with the tokens each request used, the most requests in flight, and
/// the result of each call.
type Outcome = (Vec<(Received, u64)>, usize, Vec<Result<(), HostErrorKind>>);

/// Runs the calls on a paused-time runtime; returns the server log with the tokens each
/// request really used, and the outcome of each call.
fn run_bursts(rpm: u32, tpm: u32, concurrent: u32, bursts: &[Burst]) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let server = MockServer::start().await;
        // Call id → (usage to report, delay), decided before the call is made.
        let plan: Arc<Mutex<Plan>> = Arc::default();
        let answers = Arc::clone(&plan);
        server.respond_with(move |r| {
            let id = r
                .last_user_text()
                .split(' ')
                .next()
                .unwrap_or("")
                .to_string();
            let (input, output, delay) = answers.lock().get(&id).copied().unwrap_or((0, 0, 0));
            Step::json(200, openai_reply("ok", "gpt-4o-mini", input, output))
                .delayed(Duration::from_millis(delay))
        });
        let conns: Arc<dyn Connections> = Arc::new(limited(Some(rpm), Some(tpm), Some(concurrent)));
        let program = program(&server.base());
        let start = Instant::now();
        let mut tasks = Vec::new();
        for (i, b) in bursts.iter().enumerate() {
            let id = format!("call-{i}");
            let mut req: ChatRequest = request(None, &format!("{id} {}", "x".repeat(b.chars)));
            req.max_tokens = Some(b.max_tokens);
            let estimated = concerto_conn::wire::estimate_usage(&req, "").input_tokens;
            plan.lock().insert(
                id,
                (
                    estimated * b.input_pct / 100,
                    b.max_tokens * b.output_pct / 100,
                    b.delay_ms,
                ),
            );
            let conns = Arc::clone(&conns);
            let program = Arc::clone(&program);
            let at = start + Duration::from_millis(b.start_ms);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                conns
                    .chat(&program, ConnectionId(0), req)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.kind)
            }));
        }
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        let plan = plan.lock();
        let log = server
            .requests()
            .into_iter()
            .map(|r| {
                let id = r
                    .last_user_text()
                    .split(' ')
                    .next()
                    .unwrap_or("")
                    .to_string();
                let (input, output, _) = plan.get(&id).copied().unwrap_or((0, 0, 0));
                (r, input + output)
            })
            .collect();
        (log, server.max_in_flight(), outcomes)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn configured_limits_are_never_exceeded(
        rpm in 1u32..8,
        tpm in 200u32..3000,
        concurrent in 1u32..5,
        bursts in proptest::collection::vec(burst(), 1..24),
    ) {
        let (log, max_in_flight, outcomes) = run_bursts(rpm, tpm, concurrent, &bursts);
        prop_assert!(max_in_flight <= concurrent as usize, "{max_in_flight} in flight");
        // Every call that fits the token limit succeeds; the others fail at once.
        let mut expected_requests = 0;
        for (i, (b, outcome)) in bursts.iter().zip(&outcomes).enumerate() {
            let mut req = request(None, &format!("call-{i} {}", "x".repeat(b.chars)));
            req.max_tokens = Some(b.max_tokens);
            let reserve = concerto_conn::wire::estimate_usage(&req, "").input_tokens + b.max_tokens;
            if reserve <= u64::from(tpm) {
                expected_requests += 1;
                prop_assert_eq!(outcome, &Ok(()));
            } else {
                prop_assert_eq!(outcome, &Err(HostErrorKind::Limit));
            }
        }
        prop_assert_eq!(log.len(), expected_requests);
        let window = Duration::from_secs(60);
        for (first, _) in &log {
            let in_window: Vec<&(Received, u64)> = log
                .iter()
                .filter(|(r, _)| r.arrived >= first.arrived && r.arrived < first.arrived + window)
                .collect();
            prop_assert!(in_window.len() <= rpm as usize,
                "{} requests in the minute from {:?}", in_window.len(), first.arrived);
            let tokens: u64 = in_window.iter().map(|(_, t)| t).sum();
            prop_assert!(tokens <= u64::from(tpm), "{tokens} tokens in one minute");
        }
    }
}
