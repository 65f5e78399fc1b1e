//! Overhead of the connection layer against a bare hyper client, on an in-process mock
//! provider. Prints one JSON object on stdout.
//!
//! ```text
//! cargo run --release -p concerto-conn --example conn_bench -- \
//!     [--calls 1000] [--in-flight 100] [--delay-ms 50] [--seq 2000] [--otlp URL]
//! ```
//!
//! Each call of ours is made inside the spans the VM makes for an agent call
//! (`invoke_agent`, then `chat` for the request; the layer adds the attempt's): without
//! `--otlp` no subscriber is installed and they cost their callsite checks; with it, a
//! subscriber exports them over OTLP/HTTP (batch processor, protobuf) to the collector at
//! URL, as `concerto run --otlp` does.
//!
//! - (a) `--calls` calls through `HttpConnections` used as `Arc<dyn Connections>`,
//!   `--in-flight` at a time, the server answering an OpenAI-shaped reply after
//!   `--delay-ms`: wall time (ideal: calls / in-flight × delay) and CPU time per call.
//! - (b) the same calls with a bare hyper-util client sending the same request (same
//!   headers, same JSON body built with serde_json) and parsing the reply with serde_json:
//!   CPU time per call, and the ratio.
//! - (c) one request at a time against an instant server, `--seq` calls of each,
//!   interleaved: per-call latency of both, and the median and p99 of the difference.
//!
//! CPU time is the client runtime's own: the server runs on a separate runtime, and only
//! the threads of the client runtime (named `bench-client`) are counted, from
//! `/proc/self/task/*/schedstat` (nanoseconds; `/proc/self/task/*/stat` ticks where
//! schedstat is missing). The process total is reported too.

#[path = "../tests/support/server.rs"]
mod server;

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use concerto_conn::HttpConnections;
use concerto_vm::host::{ChatMessage, ChatRequest, ConnectionId, Connections, Program};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use server::{MockServer, Step, openai_reply};
use tokio::sync::Semaphore;

const CLIENT_THREAD: &str = "bench-client";
const KEY: &str = "sk-bench-key";

struct Options {
    calls: usize,
    in_flight: usize,
    delay_ms: u64,
    seq: usize,
    otlp: Option<String>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        calls: 1000,
        in_flight: 100,
        delay_ms: 50,
        seq: 2000,
        otlp: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args
            .get(i + 1)
            .ok_or_else(|| format!("{} needs a value", args[i]))?;
        if args[i] == "--otlp" {
            o.otlp = Some(value.clone());
            i += 2;
            continue;
        }
        let n: u64 = value
            .parse()
            .map_err(|_| format!("{} needs a number, not {value}", args[i]))?;
        match args[i].as_str() {
            "--calls" => o.calls = n.max(1) as usize,
            "--in-flight" => o.in_flight = n.max(1) as usize,
            "--delay-ms" => o.delay_ms = n,
            "--seq" => o.seq = n.max(1) as usize,
            other => return Err(format!("unknown option {other}")),
        }
        i += 2;
    }
    Ok(o)
}

/// CPU time of the client runtime's threads (and the source used).
fn client_cpu() -> (Duration, &'static str) {
    let mut total = Duration::ZERO;
    let mut source = "schedstat";
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (Duration::ZERO, "unavailable");
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != CLIENT_THREAD {
            continue;
        }
        let sched = std::fs::read_to_string(dir.join("schedstat")).ok();
        match sched
            .as_deref()
            .and_then(|s| s.split_whitespace().next())
            .and_then(|ns| ns.parse::<u64>().ok())
        {
            Some(ns) => total += Duration::from_nanos(ns),
            None => {
                source = "stat";
                total += stat_ticks(&dir.join("stat"));
            }
        }
    }
    (total, source)
}

/// utime + stime of a `stat` file, at the usual 100 ticks per second.
fn stat_ticks(path: &std::path::Path) -> Duration {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the name.
    Duration::from_millis((tick(11) + tick(12)) * 10)
}

fn process_cpu() -> Duration {
    stat_ticks(std::path::Path::new("/proc/self/stat"))
}

fn the_request(i: usize) -> ChatRequest {
    let mut req = ChatRequest::new(
        "Bench",
        Some("gpt-4o-mini".into()),
        vec![
            ChatMessage::new("system", "You are a benchmark."),
            ChatMessage::new("user", format!("Request number {i}: say something short.")),
        ],
    );
    req.temperature = Some(0.2);
    req.max_tokens = Some(64);
    req
}

/// The body the wire layer sends for `the_request(i)`, built the same way (serde_json).
fn bare_body(i: usize) -> Bytes {
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "You are a benchmark."},
                     {"role": "user", "content": format!("Request number {i}: say something short.")}],
        "temperature": 0.2,
        "max_tokens": 64
    });
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

type Bare = Client<HttpConnector, Full<Bytes>>;

async fn bare_call(client: &Bare, uri: &hyper::Uri, i: usize) -> Result<String, String> {
    let request = hyper::Request::post(uri.clone())
        .header("content-type", "application/json")
        .header("user-agent", "concerto/bench")
        .header("authorization", format!("Bearer {KEY}"))
        .body(Full::new(bare_body(i)))
        .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    value["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "no content".to_string())
}

async fn ours_call(
    conns: &Arc<dyn Connections>,
    program: &Arc<Program>,
    i: usize,
) -> Result<String, String> {
    conns
        .chat(program, ConnectionId(0), the_request(i))
        .await
        .map(|r| r.text)
        .map_err(|e| e.message)
}

/// Runs `calls` calls, `in_flight` at a time; the wall time.
async fn burst<F, Fut>(calls: usize, in_flight: usize, call: F) -> Result<Duration, String>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<String, String>> + Send + 'static,
{
    let gate = Arc::new(Semaphore::new(in_flight));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(calls);
    for i in 0..calls {
        let permit = Arc::clone(&gate)
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let fut = call(i);
        tasks.push(tokio::spawn(async move {
            let out = fut.await;
            drop(permit);
            out
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(started.elapsed())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "conn_bench: {e}");
            std::process::exit(2);
        }
    };
    let export = match o.otlp.as_deref().map(install_otlp).transpose() {
        Ok(export) => export,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "conn_bench: {e}");
            std::process::exit(2);
        }
    };
    let result = run(&o);
    if let Some(provider) = export
        && let Err(e) = provider.shutdown()
    {
        let _ = writeln!(std::io::stderr(), "conn_bench: OTLP export: {e}");
        std::process::exit(1);
    }
    match result {
        Ok(mut report) => {
            report["otlp"] = json!(o.otlp.is_some());
            let _ = writeln!(std::io::stdout(), "{report}");
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "conn_bench: {e}");
            std::process::exit(1);
        }
    }
}

fn run(o: &Options) -> Result<Value, String> {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-server")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(CLIENT_THREAD)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;

    let delay = Arc::new(AtomicU64::new(o.delay_ms));
    let server = server_rt.block_on(MockServer::start());
    let reply_delay = Arc::clone(&delay);
    let reply = openai_reply(
        "A short answer from the mock provider.",
        "gpt-4o-mini",
        24,
        9,
    );
    server.respond_with(move |_| {
        Step::json(200, reply.clone())
            .delayed(Duration::from_millis(reply_delay.load(Ordering::Relaxed)))
    });

    let ir = json!({
        "version": "0.1.0", "module": "bench", "source_file": "bench.conc",
        "connections": [{"name": "openai", "config": {
            "provider": "openai", "api_key": KEY, "base_url": server.base_v1(),
            "default_model": "gpt-4o-mini"}}],
        "constants": [{"index": 0, "type": "int", "value": 0}],
        "functions": [{"name": "main", "module": "bench", "visibility": "private", "params": [],
                        "return_type": "nil", "is_async": false, "locals": [],
                        "instructions": [{"op": "LOAD_CONST", "arg": 0}, {"op": "RETURN"}]}],
        "metadata": {"compiler_version": "bench", "compiled_at": "", "optimization_level": 0,
                     "debug_info": false, "entry_point": "main"}
    });
    let program = Arc::new(concerto_ir::load_str(&ir.to_string()).map_err(|e| e.to_string())?);
    let conns: Arc<dyn Connections> = Arc::new(HttpConnections::new());
    let uri: hyper::Uri = format!("{}/chat/completions", server.base_v1())
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| e.to_string())?;
    let bare: Bare = {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        Client::builder(TokioExecutor::new()).build(http)
    };

    let ours = |i: usize| {
        let conns = Arc::clone(&conns);
        let program = Arc::clone(&program);
        // The spans of an agent call, as the VM makes them.
        let call =
            concerto_vm::spans::agent_call("Bench", "openai", Some("gpt-4o-mini"), "execute");
        let request = concerto_vm::spans::request(&call, Some("gpt-4o-mini"), 0, 0);
        async move {
            let reply =
                tracing::Instrument::instrument(ours_call(&conns, &program, i), request.clone())
                    .await;
            drop(request);
            drop(call);
            reply
        }
    };
    let plain = |i: usize| {
        let bare = bare.clone();
        let uri = uri.clone();
        async move { bare_call(&bare, &uri, i).await }
    };

    // (a) and (b): warm the pools, then measure each side.
    let (ours_total, ours_cpu, bare_total, bare_cpu, cpu_source, process) =
        client_rt.block_on(async {
            burst(o.in_flight, o.in_flight, ours).await?;
            burst(o.in_flight, o.in_flight, plain).await?;
            let p0 = process_cpu();
            let (c0, source) = client_cpu();
            let ours_total = burst(o.calls, o.in_flight, ours).await?;
            let (c1, _) = client_cpu();
            let bare_total = burst(o.calls, o.in_flight, plain).await?;
            let (c2, _) = client_cpu();
            let p1 = process_cpu();
            Ok::<_, String>((ours_total, c1 - c0, bare_total, c2 - c1, source, p1 - p0))
        })?;

    // (c): one at a time against an instant server, interleaved.
    delay.store(0, Ordering::Relaxed);
    let (ours_lat, bare_lat) = client_rt.block_on(async {
        let mut ours_lat = Vec::with_capacity(o.seq);
        let mut bare_lat = Vec::with_capacity(o.seq);
        for i in 0..(o.seq / 10).max(1) {
            ours(i).await?;
            plain(i).await?;
        }
        for i in 0..o.seq {
            let t = Instant::now();
            ours(i).await?;
            ours_lat.push(micros(t.elapsed()));
            let t = Instant::now();
            plain(i).await?;
            bare_lat.push(micros(t.elapsed()));
        }
        Ok::<_, String>((ours_lat, bare_lat))
    })?;
    let mut diffs: Vec<f64> = ours_lat.iter().zip(&bare_lat).map(|(a, b)| a - b).collect();
    let mut ours_sorted = ours_lat;
    let mut bare_sorted = bare_lat;
    for v in [&mut diffs, &mut ours_sorted, &mut bare_sorted] {
        v.sort_by(f64::total_cmp);
    }

    let per_call = |d: Duration| micros(d) / o.calls as f64;
    let ours_cpu_us = per_call(ours_cpu);
    let bare_cpu_us = per_call(bare_cpu);
    let round = |x: f64| (x * 10.0).round() / 10.0;
    drop(server);
    Ok(json!({
        "calls": o.calls,
        "in_flight": o.in_flight,
        "delay_ms": o.delay_ms,
        "ideal_total_s": (o.calls as f64 / o.in_flight as f64) * o.delay_ms as f64 / 1000.0,
        "ours_total_s": (ours_total.as_secs_f64() * 1000.0).round() / 1000.0,
        "bare_total_s": (bare_total.as_secs_f64() * 1000.0).round() / 1000.0,
        "ours_cpu_us_per_call": round(ours_cpu_us),
        "bare_cpu_us_per_call": round(bare_cpu_us),
        "cpu_ratio": if bare_cpu_us > 0.0 { (ours_cpu_us / bare_cpu_us * 100.0).round() / 100.0 } else { 0.0 },
        "cpu_source": cpu_source,
        "process_cpu_us_per_call_both_sides": round(micros(process) / (2 * o.calls) as f64),
        "seq_calls": o.seq,
        "ours_latency_us_median": round(percentile(&ours_sorted, 0.5)),
        "bare_latency_us_median": round(percentile(&bare_sorted, 0.5)),
        "ours_latency_us_p99": round(percentile(&ours_sorted, 0.99)),
        "bare_latency_us_p99": round(percentile(&bare_sorted, 0.99)),
        "added_latency_us_median": round(percentile(&diffs, 0.5)),
        "added_latency_us_p99": round(percentile(&diffs, 0.99)),
    }))
}

/// Installs a subscriber that exports the spans over OTLP/HTTP to the collector at `base`
/// (`base/v1/traces`), with a batch processor; the provider is shut down (flushed) at the end.
fn install_otlp(base: &str) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, String> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // Plain HTTP to a local collector: rustls on ring without roots.
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let client = reqwest::blocking::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')))
        .build()
        .map_err(|e| e.to_string())?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("concerto"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_target(false)
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target(concerto_vm::spans::TARGET, tracing::Level::INFO),
        );
    tracing_subscriber::registry()
        .with(layer)
        .try_init()
        .map_err(|e| e.to_string())?;
    Ok(provider)
}
