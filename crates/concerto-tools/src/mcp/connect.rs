//! Opening an MCP session: the stdio child process or the streamable-HTTP endpoint, then
//! the `initialize` handshake, all through `rmcp`.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use concerto_vm::host::{HostError, HostErrorKind};
use rmcp::ServiceExt;
use rmcp::model::{ClientCapabilities, ClientConfig, Implementation, ProtocolVersion};
use rmcp::model::{ClientJsonRpcMessage, JsonRpcMessage};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpClientTransportConfig, StreamableHttpError,
    StreamableHttpPostResponse, StreamableHttpResponseLimits,
};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use tokio::io::AsyncReadExt;
use tokio::process::ChildStderr;

use super::config::{ServerConfig, Transport};

/// A running client session.
pub(super) type Session = RunningService<RoleClient, ClientConfig>;

/// How many stderr lines of a child are kept for error messages.
const TAIL_LINES: usize = 20;
/// How many of them an error message shows.
const SHOWN_LINES: usize = 5;
/// Longest stderr line kept, in bytes (the rest of the line is dropped).
const MAX_LINE_BYTES: usize = 400;
/// How long an error path waits for a dead child's last stderr output.
const STDERR_SETTLE: Duration = Duration::from_millis(500);

/// What we tell servers about ourselves.
fn client_info() -> ClientConfig {
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("concerto", env!("CARGO_PKG_VERSION")),
    )
    // The newest revision that still has the `initialize` handshake: servers in the wild
    // speak it, and a server answering with an older revision is accepted by rmcp.
    .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
}

/// The last lines a child process wrote to stderr (which is captured, so it never mixes
/// with our own output; each line is also logged at `debug` level).
pub(super) struct StderrTail {
    server: String,
    secrets: Vec<String>,
    lines: parking_lot::Mutex<VecDeque<String>>,
    done: tokio::sync::watch::Sender<bool>,
}

impl StderrTail {
    fn new(server: &str, secrets: Vec<String>) -> StderrTail {
        StderrTail {
            server: server.to_string(),
            secrets,
            lines: parking_lot::Mutex::new(VecDeque::new()),
            done: tokio::sync::watch::Sender::new(false),
        }
    }

    fn push(&self, raw: &[u8]) {
        let mut line = String::from_utf8_lossy(raw).trim_end().to_string();
        if line.is_empty() {
            return;
        }
        for secret in &self.secrets {
            if line.contains(secret.as_str()) {
                line = line.replace(secret.as_str(), "[redacted]");
            }
        }
        tracing::debug!(target: "concerto::mcp", server = %self.server, "stderr: {line}");
        let mut lines = self.lines.lock();
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// Waits briefly for the child's stderr to close (it does when the child exits), so a
    /// message about a dead server can show what it printed last.
    pub(super) async fn settle(&self) {
        let mut rx = self.done.subscribe();
        let _ = tokio::time::timeout(STDERR_SETTLE, rx.wait_for(|done| *done)).await;
    }

    /// `; its stderr ended with: …` or nothing.
    pub(super) fn render(&self) -> String {
        let lines = self.lines.lock();
        if lines.is_empty() {
            return String::new();
        }
        let skip = lines.len().saturating_sub(SHOWN_LINES);
        let shown: Vec<&str> = lines.iter().skip(skip).map(String::as_str).collect();
        format!("; its stderr ended with: {}", shown.join(" | "))
    }
}

/// Reads the child's stderr to the end (so the pipe never fills and blocks the child).
async fn pump(mut stderr: ChildStderr, tail: Arc<StderrTail>) {
    let mut buf = vec![0u8; 4096];
    let mut line = Vec::new();
    loop {
        let n = match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &byte in buf.get(..n).unwrap_or_default() {
            if byte == b'\n' {
                tail.push(&line);
                line.clear();
            } else if line.len() < MAX_LINE_BYTES {
                line.push(byte);
            }
        }
    }
    tail.push(&line);
    tail.done.send_replace(true);
}

/// A connected session and, for a child process, its stderr.
pub(super) struct Connected {
    pub(super) session: Session,
    pub(super) stderr: Option<Arc<StderrTail>>,
}

/// Starts (stdio) or reaches (HTTP) the server and performs the handshake within the
/// configured timeout. `ctx` names the server (and tool) for messages.
pub(super) async fn connect(
    config: &ServerConfig,
    base_dir: Option<&std::path::Path>,
    // The variable patterns a child inherits, and the host's values of variables.
    (env_allowed, env_values): (&[String], &[(String, String)]),
    net: Option<&crate::NetCheck>,
    http_client: impl FnOnce() -> Result<reqwest::Client, HostError>,
    refused: &RefusedRedirects,
    ctx: &str,
) -> Result<Connected, HostError> {
    match &config.transport {
        Transport::Stdio {
            program,
            args,
            env,
            cwd,
        } => {
            let (program, args, cwd) =
                crate::resolve_paths(base_dir, program, args, cwd.as_deref());
            let cwd = &cwd;
            let mut command = tokio::process::Command::new(&program);
            command
                .args(&args)
                .env_clear()
                .envs(crate::child_env(env_allowed, env_values));
            for (name, value) in env {
                match value {
                    Some(value) => command.env(name, value),
                    None => command.env_remove(name),
                };
            }
            if let Some(dir) = cwd {
                command.current_dir(dir);
            }
            // A safety net: the child dies with its handle even without a runtime to run
            // rmcp's asynchronous cleanup.
            command.kill_on_drop(true);
            let (transport, stderr) = TokioChildProcess::builder(command)
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| {
                    let dir = cwd
                        .as_deref()
                        .map(|d| format!(" in directory `{d}`"))
                        .unwrap_or_default();
                    HostError::failed(format!("{ctx}: cannot start command `{program}`{dir}: {e}"))
                })?;
            let tail = Arc::new(StderrTail::new(&config.name, config.secrets()));
            if let Some(stderr) = stderr {
                tokio::spawn(pump(stderr, tail.clone()));
            } else {
                tail.done.send_replace(true);
            }
            match handshake(client_info().serve(transport), config, ctx).await {
                Ok(session) => Ok(Connected {
                    session,
                    stderr: Some(tail),
                }),
                Err(mut err) => {
                    if err.kind != HostErrorKind::Timeout {
                        tail.settle().await;
                    }
                    err.message.push_str(&tail.render());
                    Err(err)
                }
            }
        }
        Transport::Http { url, headers } => {
            if let Some(net) = net
                && let Some((host, port)) = host_port(url)
                && !net(&host, port)
            {
                let shown = host.trim_start_matches('[').trim_end_matches(']');
                return Err(HostError::not_enabled(format!(
                    "{ctx}: its URL goes to `{host}:{port}`, which the host did not allow; \
                     allow it with `--allow-net {shown}`"
                )));
            }
            let client = http_client()?;
            let transport_config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                .custom_headers(headers.iter().cloned().collect());
            let transport =
                StreamableHttpClientTransport::with_client(SessionAware(client), transport_config);
            let session = match handshake(client_info().serve(transport), config, ctx).await {
                Ok(session) => session,
                // The transport reports a refused redirect as a failed request; the policy
                // kept what it refused, so the refusal reads as one.
                Err(err) => {
                    let origin = reqwest::Url::parse(url).map(|u| u.to_string());
                    return match origin.ok().and_then(|o| refused.lock().remove(&o)) {
                        Some(to) => Err(HostError::not_enabled(format!(
                            "{ctx}: its URL redirects to `{to}`, which the host did not allow; \
                             allow it with `--allow-net {}`",
                            to.rsplit_once(':')
                                .map_or(to.as_str(), |(host, _)| host)
                                .trim_start_matches('[')
                                .trim_end_matches(']')
                        ))),
                        None => Err(err),
                    };
                }
            };
            Ok(Connected {
                session,
                stderr: None,
            })
        }
    }
}

async fn handshake<F, E>(serve: F, config: &ServerConfig, ctx: &str) -> Result<Session, HostError>
where
    F: Future<Output = Result<Session, E>>,
    E: std::error::Error,
{
    match tokio::time::timeout(config.timeout, serve).await {
        Ok(Ok(session)) => Ok(session),
        Ok(Err(e)) => {
            let reason = plain(&error_chain(&e));
            let hint = if matches!(config.transport, Transport::Http { .. })
                && reason.contains("HTTP 404")
            {
                "; is the URL the server's streamable-HTTP endpoint (often ending in `/mcp`)?"
            } else {
                ""
            };
            Err(HostError::failed(format!(
                "{ctx}: the MCP handshake with {} failed: {reason}{hint}",
                config.endpoint(),
            )))
        }
        Err(_) => Err(HostError {
            kind: HostErrorKind::Timeout,
            message: format!(
                "{ctx}: {} did not complete the MCP handshake within {}",
                config.endpoint(),
                seconds(config.timeout)
            ),
            provider: None,
        }),
    }
}

/// An rmcp transport error as a person reads it: without the transport's Rust type name
/// (`Transport [rmcp::…<…>] error: `), with an HTML error page named rather than quoted, on
/// one line.
fn plain(text: &str) -> String {
    let mut text = text.to_string();
    if let Some(start) = text.find("Transport [")
        && let Some(end) = text[start..].find("] error: ")
    {
        text.replace_range(..start + end + "] error: ".len(), "");
    }
    let lower = text.to_ascii_lowercase();
    if let Some(start) = lower.find("<!doctype").or_else(|| lower.find("<html")) {
        let end = lower
            .rfind("</html>")
            .map_or(text.len(), |end| end + "</html>".len());
        if end > start {
            text.replace_range(start..end, "(an HTML page)");
        }
    }
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace(" ,", ",")
}

/// An error and its sources, without repeating a source its parent already quotes.
pub(super) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// `60s`, `1.5s`.
pub(super) fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{s}s")
    }
}

/// The host and port of `url` (the port by scheme when the URL has none).
fn host_port(url: &str) -> Option<(String, u16)> {
    let url = reqwest::Url::parse(url).ok()?;
    // `host_str` keeps an IPv6 address in brackets, as `HttpSandbox::allows` expects.
    let host = url.host_str()?.to_string();
    Some((host, url.port_or_known_default()?))
}

/// The redirects the HTTP client refused: the first URL of the chain → the refused hop's
/// `host:port`.
pub(super) type RefusedRedirects = parking_lot::Mutex<std::collections::HashMap<String, String>>;

/// The HTTP client of streamable-HTTP servers: rustls on ring with the webpki roots (the
/// same TLS stack as the LLM connections), no proxy. Redirects are followed (at most ten)
/// only to hosts `net` allows; a refused one is kept in `refused`.
pub(super) fn build_http_client(
    net: Option<Arc<crate::NetCheck>>,
    refused: Arc<RefusedRedirects>,
) -> Result<reqwest::Client, HostError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| HostError::failed(format!("MCP over HTTP: cannot set up TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 10 {
            return attempt.error("more than 10 redirects");
        }
        let target = host_port(attempt.url().as_str());
        let allowed = match (&net, &target) {
            (None, _) => true,
            (Some(net), Some((host, port))) => net(host, *port),
            (Some(_), None) => false,
        };
        if allowed {
            attempt.follow()
        } else {
            let to = attempt.url().host_str().unwrap_or("?").to_string();
            if let Some(origin) = attempt.previous().first() {
                let hop = target.map_or(to.clone(), |(host, port)| format!("{host}:{port}"));
                refused.lock().insert(origin.to_string(), hop);
            }
            attempt.error(format!(
                "a redirect to `{to}`, which the host did not allow (--allow-net {to})"
            ))
        }
    });
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .redirect(redirects)
        .build()
        .map_err(|e| {
            HostError::failed(format!(
                "MCP over HTTP: cannot build the HTTP client: {}",
                error_chain(&e)
            ))
        })
}

/// The HTTP client of a streamable-HTTP session: `reqwest`, except that a server which no
/// longer knows the session (it restarted, or the session expired) starts a new session at
/// once. rmcp does that for a 404; servers built on the official TypeScript SDK answer 400
/// with a JSON-RPC error without an `id`, which rmcp cannot route to the waiting request, so
/// the request would wait for its whole timeout. Such an answer to a request that carried a
/// session, like a 400 without a JSON-RPC body, reads as "session expired": rmcp then opens a
/// new session and sends the request again (once).
#[derive(Clone)]
pub(super) struct SessionAware(reqwest::Client);

impl SessionAware {
    fn expired(
        session: bool,
        result: Result<StreamableHttpPostResponse, StreamableHttpError<reqwest::Error>>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<reqwest::Error>> {
        if !session {
            return result;
        }
        match result {
            Ok(StreamableHttpPostResponse::Json(JsonRpcMessage::Error(error), _))
                if error.id.is_none() =>
            {
                tracing::debug!(target: "concerto::mcp", "the server does not know the session ({}); starting a new one", error.error.message);
                Err(StreamableHttpError::SessionExpired)
            }
            Err(StreamableHttpError::UnexpectedServerResponse(text))
                if text.starts_with("HTTP 400") =>
            {
                tracing::debug!(target: "concerto::mcp", "the server refused the session ({text}); starting a new one");
                Err(StreamableHttpError::SessionExpired)
            }
            other => other,
        }
    }
}

impl StreamableHttpClient for SessionAware {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: std::collections::HashMap<http::HeaderName, http::HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        self.post_message_with_response_limits(
            uri,
            message,
            session_id,
            auth_header,
            custom_headers,
            StreamableHttpResponseLimits::default(),
        )
        .await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: std::collections::HashMap<http::HeaderName, http::HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        let session = session_id.is_some();
        let result = self
            .0
            .post_message_with_max_sse_event_size(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await;
        SessionAware::expired(session, result)
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: std::collections::HashMap<http::HeaderName, http::HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        let session = session_id.is_some();
        let result = self
            .0
            .post_message_with_response_limits(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                limits,
            )
            .await;
        SessionAware::expired(session, result)
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: std::collections::HashMap<http::HeaderName, http::HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        self.0
            .delete_session(uri, session_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: std::collections::HashMap<http::HeaderName, http::HeaderValue>,
    ) -> Result<
        futures_core::stream::BoxStream<'static, Result<sse_stream::Sse, SseError>>,
        StreamableHttpError<Self::Error>,
    > {
        self.0
            .get_stream(uri, session_id, last_event_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: std::collections::HashMap<http::HeaderName, http::HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<
        futures_core::stream::BoxStream<'static, Result<sse_stream::Sse, SseError>>,
        StreamableHttpError<Self::Error>,
    > {
        self.0
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }
}
