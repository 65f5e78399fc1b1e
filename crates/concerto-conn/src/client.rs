//! The HTTP client (one pooled hyper client over rustls, shared by every connection) and
//! one attempt of one call: send, check the status, read the body whole or as a stream.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use crate::config::{HttpTarget, Secrets};
use crate::retry;
use crate::wire::{self, Reply, StreamDecoder, ToolNames, WireError};

/// Largest response body read (whole or streamed).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Largest error body read (the rest is ignored).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// How long the end of a stream is awaited after the provider's end marker.
const STREAM_END_GRACE: Duration = Duration::from_millis(250);
/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);

type Hyper = Client<Timed<HttpsConnector<HttpConnector>>, Full<Bytes>>;

/// The shared HTTP client: HTTP/1.1 and HTTP/2 (chosen by ALPN) over TLS with the webpki
/// roots, plain HTTP for local servers, pooled connections.
#[derive(Clone)]
pub(crate) struct HttpClient {
    inner: Result<Hyper, Arc<str>>,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Ok(_) => f.write_str("HttpClient"),
            Err(e) => write!(f, "HttpClient(unusable: {e})"),
        }
    }
}

impl HttpClient {
    /// Builds the client (no I/O happens here).
    pub(crate) fn new() -> HttpClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
        {
            Ok(builder) => {
                let https = builder
                    .https_or_http()
                    .enable_http1()
                    .enable_http2()
                    .wrap_connector(http);
                let https = Timed(https);
                Ok(Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(POOL_IDLE)
                    .build(https))
            }
            Err(e) => Err(Arc::from(format!("the TLS configuration failed: {e}"))),
        };
        HttpClient { inner }
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Result<Response<Incoming>, Failure> {
        let client = self
            .inner
            .as_ref()
            .map_err(|e| Failure::Setup(e.to_string()))?;
        client
            .request(request)
            .await
            .map_err(|e| Failure::Transport(error_chain(&e)))
    }
}

/// Why one attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Failure {
    /// The provider answered with a non-2xx status.
    Status {
        /// The status.
        status: u16,
        /// The provider's message (secrets redacted).
        message: String,
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
        /// `x-should-retry`, when given.
        should_retry: Option<bool>,
    },
    /// No complete response within the time limit.
    Timeout(Duration),
    /// The connection could not be made, or broke.
    Transport(String),
    /// A 2xx response whose body is not a valid reply.
    Invalid(String),
    /// A 2xx response (usually a stream) that ended before the reply was complete.
    Incomplete(String),
    /// The provider reported an error inside a 2xx response (e.g. a stream `error` event).
    Provider(String),
    /// The client itself could not be built.
    Setup(String),
}

impl Failure {
    /// Whether another attempt may succeed.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Failure::Status {
                status,
                should_retry,
                ..
            } => should_retry.unwrap_or_else(|| retry::status_is_transient(*status)),
            Failure::Timeout(_) | Failure::Transport(_) | Failure::Provider(_) => true,
            Failure::Invalid(_) | Failure::Incomplete(_) | Failure::Setup(_) => false,
        }
    }

    /// The wait the provider asked for.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the provider refused for rate limiting.
    pub(crate) fn is_rate_limited(&self) -> bool {
        matches!(self, Failure::Status { status: 429, .. })
    }

    /// What the program's `AgentError` says about this failure.
    pub(crate) fn provider_failure(&self) -> concerto_vm::host::ProviderFailure {
        use concerto_vm::host::{ProviderFailure, ProviderFailureKind as K};
        let kind = match self {
            f if f.is_rate_limited() => K::RateLimited,
            Failure::Status { .. } | Failure::Provider(_) => K::Provider,
            Failure::Timeout(_) => K::Timeout,
            Failure::Transport(_)
            | Failure::Invalid(_)
            | Failure::Incomplete(_)
            | Failure::Setup(_) => K::Connection,
        };
        ProviderFailure {
            kind,
            status: match self {
                Failure::Status { status, .. } => Some(*status),
                _ => None,
            },
            retry_after_ms: self
                .retry_after()
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// The failure's class for a span's `error.type` (OpenTelemetry: low cardinality): the
    /// HTTP status for a refusal, otherwise a fixed name.
    pub(crate) fn error_type(&self) -> String {
        match self {
            Failure::Status { status, .. } => status.to_string(),
            Failure::Timeout(_) => "timeout".to_string(),
            Failure::Transport(_) => "transport".to_string(),
            Failure::Invalid(_) => "invalid_response".to_string(),
            Failure::Incomplete(_) => "incomplete_response".to_string(),
            Failure::Provider(_) => "provider_error".to_string(),
            Failure::Setup(_) => "setup".to_string(),
        }
    }

    /// The short name of the failure (`HTTP 500`, `timed out`, …).
    pub(crate) fn headline(&self) -> String {
        match self {
            Failure::Status { status, .. } => format!("HTTP {status}"),
            Failure::Timeout(_) => "timed out".to_string(),
            Failure::Transport(_) => "request failed".to_string(),
            Failure::Invalid(_) => "invalid response".to_string(),
            Failure::Incomplete(_) => "incomplete response".to_string(),
            Failure::Provider(_) => "provider error".to_string(),
            Failure::Setup(_) => "HTTP client unavailable".to_string(),
        }
    }

    /// The details.
    pub(crate) fn detail(&self) -> String {
        match self {
            Failure::Status {
                status, message, ..
            } => {
                // The wire layer's text starts with `HTTP <status>`, which the headline says.
                let prefix = format!("HTTP {status}");
                let rest = message
                    .strip_prefix(prefix.as_str())
                    .unwrap_or(message)
                    .trim_start_matches(':')
                    .trim();
                if rest.is_empty() {
                    "the response gave no details".to_string()
                } else {
                    rest.to_string()
                }
            }
            Failure::Timeout(limit) => {
                format!("no complete response within {}", human_duration(*limit))
            }
            Failure::Transport(m)
            | Failure::Invalid(m)
            | Failure::Incomplete(m)
            | Failure::Provider(m)
            | Failure::Setup(m) => m.clone(),
        }
    }

    fn redacted(self, secrets: &Secrets) -> Failure {
        match self {
            Failure::Status {
                status,
                message,
                retry_after,
                should_retry,
            } => Failure::Status {
                status,
                message: secrets.redact(&message),
                retry_after,
                should_retry,
            },
            Failure::Timeout(d) => Failure::Timeout(d),
            Failure::Transport(m) => Failure::Transport(secrets.redact(&m)),
            Failure::Invalid(m) => Failure::Invalid(secrets.redact(&m)),
            Failure::Incomplete(m) => Failure::Incomplete(secrets.redact(&m)),
            Failure::Provider(m) => Failure::Provider(secrets.redact(&m)),
            Failure::Setup(m) => Failure::Setup(secrets.redact(&m)),
        }
    }
}

/// `1.5 s`, `30 s`, `250 ms`.
pub(crate) fn human_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// An error and its causes, `outer: inner: innermost`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

fn wire_failure(e: WireError) -> Failure {
    match e {
        WireError::Malformed(m) => Failure::Invalid(m),
        WireError::Truncated(m) => Failure::Incomplete(m),
        WireError::Provider(m) => Failure::Provider(m),
    }
}

/// Reads a body up to `limit` bytes. `Err(Ok(cause))` when it breaks off, `Err(Err(read))`
/// when it is longer than the limit.
async fn read_body(body: &mut Incoming, limit: usize) -> Result<Vec<u8>, Result<String, usize>> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Ok(error_chain(&e)))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                let room = limit.saturating_sub(out.len());
                out.extend_from_slice(data.get(..room).unwrap_or_default());
                return Err(Err(out.len()));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// A duration as a span field: whole microseconds.
fn micros(d: Duration) -> i64 {
    concerto_vm::spans::int(d.as_micros())
}

/// When a connection was made and how long making it took: carried by every response on
/// it (hyper's `Connected::extra`), so an attempt can tell whether it paid for a new one.
#[derive(Debug, Clone, Copy)]
struct Made {
    at: Instant,
    took: Duration,
}

/// A connector that times the connections it makes (the wrapped connector's whole work).
#[derive(Clone)]
pub(crate) struct Timed<C>(C);

impl<C> tower_service::Service<Uri> for Timed<C>
where
    C: tower_service::Service<Uri> + Send,
    C::Future: Send + 'static,
{
    type Response = TimedIo<C::Response>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, C::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), C::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let at = Instant::now();
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            Ok(TimedIo {
                io,
                made: Made {
                    at,
                    took: at.elapsed(),
                },
            })
        })
    }
}

/// A connection made by [`Timed`]: the stream, and when it was made.
pub(crate) struct TimedIo<T> {
    io: T,
    made: Made,
}

impl<T: Connection> Connection for TimedIo<T> {
    fn connected(&self) -> Connected {
        self.io.connected().extra(self.made)
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for TimedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for TimedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

/// What one attempt sends.
pub(crate) struct Attempt<'a> {
    /// Endpoint, headers and secrets.
    pub(crate) target: &'a HttpTarget,
    /// The JSON request body.
    pub(crate) body: Bytes,
    /// Whether the body asks for a stream.
    pub(crate) stream: bool,
    /// The request's tool names (to map tool-call names back).
    pub(crate) names: &'a ToolNames,
}

/// When the moments of one attempt happened, as far as it got.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct AttemptClock {
    /// The request was handed to the HTTP client.
    pub(crate) sent: Option<Instant>,
    /// How long making the connection took, when one was made for this request.
    pub(crate) connect: Option<Duration>,
    /// The response head arrived.
    pub(crate) head: Option<Instant>,
    /// The stream's first text or tool-call content arrived.
    pub(crate) first_token: Option<Instant>,
}

/// Runs one attempt (without a time limit: the caller applies it and drops this future
/// at the deadline, which abandons the request), noting its moments in `clock`.
pub(crate) async fn attempt(
    client: &HttpClient,
    at: Attempt<'_>,
    clock: &mut AttemptClock,
) -> Result<Reply, Failure> {
    run(client, &at, clock)
        .await
        .map_err(|f| f.redacted(&at.target.secrets))
}

async fn run(
    client: &HttpClient,
    at: &Attempt<'_>,
    clock: &mut AttemptClock,
) -> Result<Reply, Failure> {
    let provider = at.target.provider;
    let mut request = Request::new(Full::new(at.body.clone()));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = at.target.uri.clone();
    *request.headers_mut() = at.target.headers.clone();
    if at.stream {
        request
            .headers_mut()
            .insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    }
    let sent = Instant::now();
    clock.sent = Some(sent);
    let response = client.send(request).await?;
    let head = Instant::now();
    clock.head = Some(head);
    clock.connect = response
        .extensions()
        .get::<Made>()
        .filter(|made| made.at >= sent)
        .map(|made| made.took);
    // On the attempt's span as they happen: an attempt cut short later keeps them.
    let span = tracing::Span::current();
    if let Some(connect) = clock.connect {
        span.record("concerto.connect_us", micros(connect));
    }
    span.record("concerto.ttfb_us", micros(head - sent));
    let status = response.status().as_u16();
    let (parts, mut body) = response.into_parts();
    if !(200..300).contains(&status) {
        let retry_after = retry::parse_retry_after(&parts.headers, SystemTime::now());
        let should_retry = retry::should_retry_header(&parts.headers);
        // A body that breaks off still leaves the status to report.
        let text = read_body(&mut body, MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        return Err(Failure::Status {
            status,
            message: wire::error_message(provider, status, &text),
            retry_after,
            should_retry,
        });
    }
    let is_event_stream = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    if at.stream && is_event_stream {
        let mut decoder = StreamDecoder::new(provider, at.names.clone());
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                Failure::Transport(format!(
                    "the stream broke off after {total} bytes: {}",
                    error_chain(&e)
                ))
            })?;
            if let Ok(data) = frame.into_data() {
                total += data.len();
                if total > MAX_BODY {
                    return Err(Failure::Invalid(format!(
                        "the stream is longer than {MAX_BODY} bytes"
                    )));
                }
                decoder.feed(&data).map_err(wire_failure)?;
                if clock.first_token.is_none() && decoder.has_output() {
                    let first = Instant::now();
                    clock.first_token = Some(first);
                    tracing::Span::current()
                        .record("concerto.first_token_us", micros(first - sent));
                }
                if decoder.is_complete() {
                    break;
                }
            }
        }
        if decoder.is_complete() && !body.is_end_stream() {
            // The reply is whole. Give the body a moment to end so the connection can be
            // pooled again; a server that keeps the stream open is simply left behind.
            let _ = tokio::time::timeout(STREAM_END_GRACE, async {
                while let Some(Ok(_)) = body.frame().await {}
            })
            .await;
        }
        return decoder.finish().map_err(wire_failure);
    }
    let bytes = match read_body(&mut body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(Ok(broken)) => {
            return Err(Failure::Transport(format!(
                "the response body broke off: {broken}"
            )));
        }
        Err(Err(_)) => {
            return Err(Failure::Invalid(format!(
                "the response body is longer than {MAX_BODY} bytes"
            )));
        }
    };
    wire::parse_body(provider, &bytes, at.names).map_err(wire_failure)
}
