//! An in-process, scriptable mock LLM provider: a hyper server on 127.0.0.1 (port 0).
//!
//! Each request takes the next scripted [`Step`] (or, when the script is empty, asks the
//! responder), and every request is logged as a [`Received`] with its headers, JSON body,
//! arrival and completion instants (on the tokio clock, so paused time works) and whether
//! the client abandoned it. The server also tracks how many requests are in flight.
//!
//! Shared by the integration tests and the `conn_bench` example.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// What the server does with one request.
#[derive(Debug, Clone)]
pub struct Step {
    /// HTTP status.
    pub status: u16,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
    /// Body (or reset).
    pub body: Body,
    /// Wait before answering.
    pub delay: Duration,
}

/// The body of a [`Step`].
#[derive(Debug, Clone)]
pub enum Body {
    /// A whole body (`application/json` unless a header says otherwise).
    Bytes(Vec<u8>),
    /// Server-sent events, one chunk each, `gap` apart; the stream then ends (a script
    /// without the end marker makes a truncated stream).
    Sse { chunks: Vec<String>, gap: Duration },
    /// Close the connection without answering.
    Reset,
}

impl Step {
    /// `status` with a JSON body.
    pub fn json(status: u16, body: Value) -> Step {
        Step {
            status,
            headers: Vec::new(),
            body: Body::Bytes(body.to_string().into_bytes()),
            delay: Duration::ZERO,
        }
    }

    /// 200 with raw bytes (e.g. malformed JSON).
    pub fn raw(status: u16, body: &str) -> Step {
        Step {
            status,
            headers: Vec::new(),
            body: Body::Bytes(body.as_bytes().to_vec()),
            delay: Duration::ZERO,
        }
    }

    /// 200 with an SSE stream.
    pub fn sse(chunks: Vec<String>) -> Step {
        Step {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body: Body::Sse {
                chunks,
                gap: Duration::from_millis(5),
            },
            delay: Duration::ZERO,
        }
    }

    /// Close the connection without an answer.
    pub fn reset() -> Step {
        Step {
            status: 0,
            headers: Vec::new(),
            body: Body::Reset,
            delay: Duration::ZERO,
        }
    }

    /// The same step after `delay`.
    pub fn delayed(mut self, delay: Duration) -> Step {
        self.delay = delay;
        self
    }

    /// The same step with one more response header.
    pub fn header(mut self, name: &str, value: &str) -> Step {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// An OpenAI chat completion with `text`.
    pub fn openai_text(text: &str) -> Step {
        Step::json(200, openai_reply(text, "gpt-4o-mini", 11, 7))
    }

    /// An Anthropic message with `text`.
    pub fn anthropic_text(text: &str) -> Step {
        Step::json(
            200,
            anthropic_reply(text, "claude-sonnet-4-20250514", 13, 5),
        )
    }
}

/// An OpenAI chat-completion body.
pub fn openai_reply(text: &str, model: &str, prompt: u64, completion: u64) -> Value {
    json!({
        "id": "chatcmpl-test", "object": "chat.completion", "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion}
    })
}

/// An Anthropic message body.
pub fn anthropic_reply(text: &str, model: &str, input: u64, output: u64) -> Value {
    json!({
        "id": "msg_test", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": input, "output_tokens": output}
    })
}

fn data(value: Value) -> String {
    format!("data: {value}\n\n")
}

fn event(name: &str, value: Value) -> String {
    format!("event: {name}\ndata: {value}\n\n")
}

/// An OpenAI stream of `pieces` of text, then usage and `[DONE]`.
pub fn openai_stream(pieces: &[&str], prompt: u64, completion: u64) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1,
               "model": "gpt-4o-mini",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut out = vec![data(chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    ))];
    for piece in pieces {
        out.push(data(chunk(json!({"content": piece}), Value::Null)));
    }
    out.push(data(chunk(json!({}), json!("stop"))));
    out.push(data(
        json!({"id": "chatcmpl-s", "object": "chat.completion.chunk",
        "created": 1, "model": "gpt-4o-mini", "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion}}),
    ));
    out.push("data: [DONE]\n\n".to_string());
    out
}

/// An OpenAI stream with one tool call `wire_name(arguments)` split in two pieces.
pub fn openai_tool_stream(wire_name: &str, id: &str, args: (&str, &str)) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": 1,
               "model": "gpt-4o-mini",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    vec![
        data(chunk(
            json!({"role": "assistant", "content": null}),
            Value::Null,
        )),
        data(chunk(
            json!({"tool_calls": [{"index": 0, "id": id, "type": "function",
                   "function": {"name": wire_name, "arguments": args.0}}]}),
            Value::Null,
        )),
        data(chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": args.1}}]}),
            Value::Null,
        )),
        data(chunk(json!({}), json!("tool_calls"))),
        data(
            json!({"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-4o-mini", "choices": [],
            "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}}),
        ),
        "data: [DONE]\n\n".to_string(),
    ]
}

/// An Anthropic stream of `pieces` of text, optionally followed by a tool call.
pub fn anthropic_stream(
    pieces: &[&str],
    tool: Option<(&str, &str, (&str, &str))>,
    input: u64,
    output: u64,
) -> Vec<String> {
    let mut out = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_s", "type": "message",
                "role": "assistant", "model": "claude-sonnet-4-20250514", "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input, "output_tokens": 1}}}),
        ),
        event("ping", json!({"type": "ping"})),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    for piece in pieces {
        out.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    out.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    let mut stop = "end_turn";
    if let Some((name, id, (a, b))) = tool {
        stop = "tool_use";
        out.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1,
                   "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
        ));
        for part in [a, b] {
            out.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                       "delta": {"type": "input_json_delta", "partial_json": part}}),
            ));
        }
        out.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ));
    }
    out.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
               "usage": {"output_tokens": output}}),
    ));
    out.push(event("message_stop", json!({"type": "message_stop"})));
    out
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Position in the log.
    pub index: usize,
    /// HTTP method.
    pub method: String,
    /// Path (and query).
    pub path: String,
    /// Headers, names lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: Value,
    /// When the request (head and body) had arrived.
    pub arrived: Instant,
    /// When the answer was complete (`None`: still running or abandoned).
    pub finished: Option<Instant>,
    /// The client went away before the answer was complete.
    pub cancelled: bool,
}

impl Received {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The text of the last message of the body.
    pub fn last_user_text(&self) -> String {
        self.body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .map(|m| match &m["content"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default()
    }
}

/// Decides the answer to a request once the script is empty.
pub type Responder = Arc<dyn Fn(&Received) -> Step + Send + Sync>;

struct State {
    script: Mutex<VecDeque<Step>>,
    responder: Mutex<Option<Responder>>,
    log: Mutex<Vec<Received>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// The running server; it stops when dropped.
pub struct MockServer {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Marks a request finished (or cancelled, when dropped unfinished) and leaves the
/// in-flight count.
struct InFlight {
    state: Arc<State>,
    index: usize,
    done: bool,
}

impl InFlight {
    fn finish(mut self) {
        self.done = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = Instant::now();
        if let Some(entry) = self.state.log.lock().get_mut(self.index) {
            if self.done {
                entry.finished = Some(now);
            } else {
                entry.cancelled = true;
            }
        }
        self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

type ResBody = BoxBody<Bytes, Infallible>;

/// A response body fed chunk by chunk through a channel; it ends when the sender drops.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

impl MockServer {
    /// Starts a server on 127.0.0.1 with an empty script (answering 500 until told).
    pub async fn start() -> MockServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            script: Mutex::new(VecDeque::new()),
            responder: Mutex::new(None),
            log: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let accept_state = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let state = Arc::clone(&accept_state);
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(Arc::clone(&state), req));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        MockServer {
            addr,
            state,
            accept,
        }
    }

    /// `http://127.0.0.1:<port>` (no `/v1`).
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:<port>/v1`.
    pub fn base_v1(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Appends steps to the script.
    pub fn script(&self, steps: impl IntoIterator<Item = Step>) {
        self.state.script.lock().extend(steps);
    }

    /// Answers with `responder` once the script is empty.
    pub fn respond_with(&self, responder: impl Fn(&Received) -> Step + Send + Sync + 'static) {
        *self.state.responder.lock() = Some(Arc::new(responder));
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Received> {
        self.state.log.lock().clone()
    }

    /// The number of requests received so far.
    pub fn count(&self) -> usize {
        self.state.log.lock().len()
    }

    /// The most requests ever in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<ResBody>, String> {
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let received = Received {
        index: 0,
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        arrived: Instant::now(),
        finished: None,
        cancelled: false,
    };
    let now_in_flight = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state
        .max_in_flight
        .fetch_max(now_in_flight, Ordering::SeqCst);
    let index = {
        let mut log = state.log.lock();
        let index = log.len();
        let mut entry = received;
        entry.index = index;
        log.push(entry);
        index
    };
    let guard = InFlight {
        state: Arc::clone(&state),
        index,
        done: false,
    };
    let step = {
        let scripted = state.script.lock().pop_front();
        match scripted {
            Some(step) => step,
            None => {
                let responder = state.responder.lock().clone();
                let entry = state.log.lock().get(index).cloned();
                match (responder, entry) {
                    (Some(responder), Some(entry)) => responder(&entry),
                    _ => Step::json(
                        500,
                        json!({"error": {"message": "mock server: no scripted reply left"}}),
                    ),
                }
            }
        }
    };
    if !step.delay.is_zero() {
        tokio::time::sleep(step.delay).await;
    }
    let mut builder = Response::builder().status(step.status.max(100));
    let mut has_type = false;
    for (name, value) in &step.headers {
        has_type |= name.eq_ignore_ascii_case("content-type");
        builder = builder.header(name.as_str(), value.as_str());
    }
    match step.body {
        Body::Reset => {
            drop(guard);
            Err("scripted reset".to_string())
        }
        Body::Bytes(bytes) => {
            if !has_type {
                builder = builder.header("content-type", "application/json");
            }
            let response = builder
                .body(Full::new(Bytes::from(bytes)).boxed())
                .map_err(|e| e.to_string());
            guard.finish();
            response
        }
        Body::Sse { chunks, gap } => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
            tokio::spawn(async move {
                for (i, chunk) in chunks.into_iter().enumerate() {
                    if i > 0 && !gap.is_zero() {
                        tokio::time::sleep(gap).await;
                    }
                    if tx.send(Bytes::from(chunk)).await.is_err() {
                        return; // the client went away: `guard` records a cancel
                    }
                }
                guard.finish();
            });
            builder
                .body(ChannelBody(rx).boxed())
                .map_err(|e| e.to_string())
        }
    }
}
