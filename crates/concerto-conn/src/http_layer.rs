//! [`HttpConnections`]: the connection layer for real providers, over HTTP.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use concerto_vm::host::{
    BoxFuture, CallTiming, ChatRequest, ChatResponse, ConnectionId, Connections, HostError,
    HostErrorKind, Program,
};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::client::{Attempt, AttemptClock, Failure, HttpClient};
use crate::config::{EnvFn, Resolved, Target};
use crate::limits::{AdmitError, LimitSpec, Limits};
use crate::retry::RetryBudget;
use crate::wire::{Outgoing, ToolNames};
use crate::{
    ConnectionSettings, Fallback, FallbackOn, MockConnections, PriceTable, client, config, model,
    retry, wire,
};

/// Reads an environment variable: how [`HttpConnections`] finds API keys
/// (`std::env::var` unless [`HttpConnections::with_env`] says otherwise).
pub type EnvLookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Says whether a connection may read its API key from an environment variable (by name):
/// see [`HttpConnections::with_key_approval`].
pub type KeyApproval = dyn Fn(&str) -> bool + Send + Sync;

/// Says whether a connection may send to a host (as in its URL) and port the program chose:
/// see [`HttpConnections::with_host_approval`].
pub type HostApproval = dyn Fn(&str, u16) -> bool + Send + Sync;

/// Retries allowed across all calls of one [`HttpConnections`] unless
/// [`HttpConnections::with_retry_budget`] says otherwise.
pub const DEFAULT_RETRY_BUDGET: u32 = 100;

/// Output tokens reserved against a tokens-per-minute limit for a request that sets no
/// `max_tokens` (cut down to what the limit leaves after the input).
pub const DEFAULT_OUTPUT_RESERVE: u64 = 1024;

/// The connection layer for real providers, over HTTP.
///
/// Build it once per process (or per host) and share it: it owns the pooled HTTP client,
/// the per-connection rate and concurrency limits and the retry budget.
///
/// # How a call goes
/// - **Settings** of a connection are resolved once per (program, connection): the IR
///   entry's `config` (`provider`, `api_key`, `api_key_env`, `base_url`, `default_model`,
///   `timeout`, `models`, `retry`, `rate_limit`, `headers`, `organization`, `project`,
///   `stream`, `anthropic_structured`), overlaid by the host's [`ConnectionSettings`].
///   `anthropic` speaks Anthropic Messages; `openai`, `ollama` and any other name speak
///   OpenAI Chat Completions; `mock` (host setting) answers from [`MockConnections`].
/// - **URL**: `<base_url>/<endpoint>`, `/v1` appended to a base that does not end in it.
/// - **API key**: the host's, else `config.api_key` (text or `{"$env": VAR}`), else the
///   variable `config.api_key_env` names (else `OPENAI_API_KEY` / `ANTHROPIC_API_KEY`).
///   OpenAI and Anthropic without a key fail before any request, naming the variable;
///   other servers are called without authentication.
/// - **Attempts**: each has a time limit (the request's, else the connection's, else
///   [`DEFAULT_TIMEOUT`]) covering the whole response, streams included; at the deadline
///   the request is dropped. Waiting for a rate or concurrency limit is not part of it.
/// - **Retries**: one loop per call, by the request's policy, else the connection's, else
///   none. 408, 409, 429, 5xx, timeouts, broken connections and provider errors inside a
///   stream are retried; other statuses and malformed or truncated bodies are not. The
///   delay follows the backoff and is never shorter than a `Retry-After` (capped at 120 s).
///   Every retry takes one from the instance's retry budget.
/// - **Limits** (`rate_limit` or the host's settings) apply to every attempt: at most
///   `max_concurrent` in flight, and no 60-second window holding more than
///   `requests_per_minute` requests or `tokens_per_minute` tokens. Calls wait for room in
///   arrival order. An attempt reserves its estimated input plus `max_tokens` (or
///   [`DEFAULT_OUTPUT_RESERVE`]) and is settled to the reported usage afterwards.
/// - **Errors** name the connection, the attempts and the last failure, and carry the
///   provider's details ([`HostError::provider`]: rate limited, provider error, connection
///   failure or timeout, the last HTTP status, the `Retry-After`). A timeout is
///   [`HostErrorKind::Timeout`]; a provider's refusal, 429 at the end included, is
///   [`HostErrorKind::Failed`] (the program gets an `AgentError` it can handle), also when
///   the retry budget ran out first (the message says so); a request larger than the
///   tokens-per-minute limit is [`HostErrorKind::Limit`] (it ends the program).
/// - **Fallbacks** ([`ConnectionSettings::fallbacks`], set by the host): when the last
///   attempt on a connection failed with a kind its [`ConnectionSettings::fallback_on`] lists
///   (429, 5xx or an error inside a stream, a timeout, a broken connection or cut-short
///   reply; all four when the list is empty), the next fallback is called — another
///   connection (one of the program's, or one only the host configured) under its own
///   retry policy and limits, and/or another model (else that connection's default model,
///   else the agent's). Other 4xx refusals and malformed replies never fall back. Each move
///   takes one from the retry budget; without one left the call ends with the last
///   failure. The reply names the connection that answered ([`ChatResponse::connection`])
///   and counts every attempt; the error of a call whose fallbacks all failed lists each
///   failure and carries the last one's details. A fallback that cannot be used (unknown
///   connection, missing key) ends the call with an error naming it.
///
///
/// ```no_run
/// use std::sync::Arc;
/// use concerto_conn::{ConnectionSettings, HttpConnections};
/// let connections = HttpConnections::new().with_settings(
///     "openai",
///     ConnectionSettings {
///         base_url: Some("http://127.0.0.1:8080/v1".into()),
///         api_key: Some("sk-test".into()),
///         ..ConnectionSettings::default()
///     },
/// );
/// let _shared: Arc<dyn concerto_vm::host::Connections> = Arc::new(connections);
/// ```
pub struct HttpConnections {
    client: HttpClient,
    env: Arc<EnvFn>,
    approve: Option<Arc<KeyApproval>>,
    hosts: Option<Arc<HostApproval>>,
    settings: HashMap<String, ConnectionSettings>,
    prices: Arc<PriceTable>,
    budget: Arc<RetryBudget>,
    mock: MockConnections,
    /// Resolved connections by (program allocation, connection index). The `Weak` keeps
    /// the allocation (so the address cannot be reused by another program) and tells
    /// whether the program is still alive.
    resolved: Mutex<ResolvedCache>,
    /// Connections only the host configured (fallbacks the program does not declare), by
    /// name, resolved on first use.
    hosted: Mutex<HashMap<String, Arc<Prepared>>>,
    /// Limit state by connection name and limits, shared by every program.
    limits: Mutex<HashMap<(String, LimitSpec), Arc<Limits>>>,
}

/// Resolved connections by (program allocation address, connection index).
type ResolvedCache = HashMap<(usize, u32), (Weak<Program>, Arc<Prepared>)>;

/// A resolved connection with its limit state.
#[derive(Debug)]
struct Prepared {
    conn: Resolved,
    limits: Option<Arc<Limits>>,
    /// The host's fallbacks of this connection, in order.
    fallbacks: Vec<Fallback>,
    /// The failures that move a call on to the next fallback (empty: all four kinds).
    fallback_on: Vec<FallbackOn>,
}

impl fmt::Debug for HttpConnections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConnections")
            .field("client", &self.client)
            .field("settings", &self.settings)
            .field("retry_budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl Default for HttpConnections {
    fn default() -> HttpConnections {
        HttpConnections::new()
    }
}

impl HttpConnections {
    /// A connection layer that reads API keys from the process environment, with the
    /// built-in prices and a retry budget of [`DEFAULT_RETRY_BUDGET`].
    pub fn new() -> HttpConnections {
        HttpConnections {
            client: HttpClient::new(),
            env: Arc::new(|name: &str| std::env::var(name).ok()),
            approve: None,
            hosts: None,
            settings: HashMap::new(),
            prices: Arc::new(PriceTable::builtin()),
            budget: Arc::new(RetryBudget::new(DEFAULT_RETRY_BUDGET)),
            mock: MockConnections::new(),
            resolved: Mutex::new(HashMap::new()),
            hosted: Mutex::new(HashMap::new()),
            limits: Mutex::new(HashMap::new()),
        }
    }

    /// Reads API-key variables through `env` instead of the process environment.
    pub fn with_env(mut self, env: Arc<EnvLookup>) -> Self {
        self.env = env;
        self.resolved.get_mut().clear();
        self.hosted.get_mut().clear();
        self
    }

    /// Lets a connection read its API key only from its provider's conventional variable
    /// (`OPENAI_API_KEY` for `openai`, `ANTHROPIC_API_KEY` for `anthropic`) and from
    /// variables `approve` accepts, whether the program named them with `api_key_env` or
    /// `{"$env": …}`; any other (another provider's conventional variable included) is
    /// refused with a not-enabled error naming the variable, before it is read. Without it
    /// every variable may be read. A key set in a connection's [`ConnectionSettings`] needs
    /// no approval.
    pub fn with_key_approval(mut self, approve: Arc<KeyApproval>) -> Self {
        self.approve = Some(approve);
        self.resolved.get_mut().clear();
        self.hosted.get_mut().clear();
        self
    }

    /// Lets a connection send only to hosts `allow` accepts when the program chose its
    /// endpoint (a `base_url` in the program, or `ollama`'s default `localhost`); the
    /// provider's own API (`https://api.openai.com`, `https://api.anthropic.com`) and a
    /// `base_url` set in a connection's [`ConnectionSettings`] need no approval. A refused
    /// host is a not-enabled error naming the connection, the host and `--allow-net`,
    /// before anything is sent (the key is not even read). Without it every host may be
    /// reached.
    pub fn with_host_approval(mut self, allow: Arc<HostApproval>) -> Self {
        self.hosts = Some(allow);
        self.resolved.get_mut().clear();
        self.hosted.get_mut().clear();
        self
    }

    /// Overrides the settings of connection `connection` (by name).
    pub fn with_settings(mut self, connection: &str, settings: ConnectionSettings) -> Self {
        self.settings.insert(connection.to_string(), settings);
        self.resolved.get_mut().clear();
        self.hosted.get_mut().clear();
        self
    }

    /// Prices used for `cost_usd`.
    pub fn with_prices(mut self, prices: PriceTable) -> Self {
        self.prices = Arc::new(prices);
        self
    }

    /// The total number of retries allowed across all calls of this instance.
    pub fn with_retry_budget(mut self, retries: u32) -> Self {
        self.budget = Arc::new(RetryBudget::new(retries));
        self
    }

    /// Starts a new run: the retry budget is full again. Limits (requests and tokens per
    /// minute, concurrency) and pooled connections carry over, as they describe the
    /// provider, not the run. The facade calls this at the start of every execution.
    pub fn begin_run(&self) {
        self.budget.refill();
    }

    /// The resolved connection `index` of `program`, from the cache or resolved now.
    fn prepared(&self, program: &Arc<Program>, index: u32) -> Result<Arc<Prepared>, HostError> {
        let key = (Arc::as_ptr(program) as usize, index);
        if let Some((_, prepared)) = self.resolved.lock().get(&key) {
            return Ok(Arc::clone(prepared));
        }
        let Some(entry) = program.connections.get(index as usize) else {
            return Err(HostError::failed(format!(
                "connection #{index} does not exist (the program declares {})",
                program.connections.len()
            )));
        };
        let conn = config::resolve(
            &entry.name,
            &entry.config,
            self.settings.get(&entry.name),
            &*self.env,
            self.approve.as_deref(),
            self.hosts.as_deref(),
        )?;
        let prepared = self.with_limits(conn);
        let mut cache = self.resolved.lock();
        cache.retain(|_, (program, _)| program.strong_count() > 0);
        cache.insert(key, (Arc::downgrade(program), Arc::clone(&prepared)));
        Ok(prepared)
    }

    /// A resolved connection with its limit state and the host's fallbacks.
    fn with_limits(&self, conn: Resolved) -> Arc<Prepared> {
        let limits = (!conn.limits.is_unlimited()).then(|| {
            let mut all = self.limits.lock();
            Arc::clone(
                all.entry((conn.name.clone(), conn.limits))
                    .or_insert_with(|| Arc::new(Limits::new(conn.limits))),
            )
        });
        let (fallbacks, fallback_on) = self
            .settings
            .get(&conn.name)
            .map(|s| (s.fallbacks.clone(), s.fallback_on.clone()))
            .unwrap_or_default();
        Arc::new(Prepared {
            conn,
            limits,
            fallbacks,
            fallback_on,
        })
    }

    /// The connection named `name`: the program's, else one only the host configured
    /// (resolved from its [`ConnectionSettings`] alone).
    fn prepared_by_name(
        &self,
        program: &Arc<Program>,
        name: &str,
    ) -> Result<Arc<Prepared>, HostError> {
        if let Some(index) = program.connections.iter().position(|c| c.name == name) {
            return self.prepared(program, u32::try_from(index).unwrap_or(u32::MAX));
        }
        if let Some(prepared) = self.hosted.lock().get(name) {
            return Ok(Arc::clone(prepared));
        }
        let Some(settings) = self.settings.get(name) else {
            return Err(HostError::failed(format!(
                "connection '{name}' is neither a connection of the program nor one the host configured"
            )));
        };
        let conn = config::resolve(
            name,
            &serde_json::Value::Null,
            Some(settings),
            &*self.env,
            self.approve.as_deref(),
            self.hosts.as_deref(),
        )?;
        let prepared = self.with_limits(conn);
        self.hosted
            .lock()
            .insert(name.to_string(), Arc::clone(&prepared));
        Ok(prepared)
    }
}

impl Connections for HttpConnections {
    fn chat(
        &self,
        program: &Arc<Program>,
        connection: ConnectionId,
        request: ChatRequest,
    ) -> BoxFuture<Result<ChatResponse, HostError>> {
        let prepared = match self.prepared(program, connection.0) {
            Ok(p) => p,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        if matches!(prepared.conn.target, Target::Mock) && prepared.fallbacks.is_empty() {
            return self.mock.chat(program, connection, request);
        }
        let mut legs = vec![Leg {
            name: prepared.conn.name.clone(),
            target: Ok(Arc::clone(&prepared)),
            model: None,
            other: false,
        }];
        for (n, fallback) in prepared.fallbacks.iter().enumerate() {
            let other = fallback
                .connection
                .as_deref()
                .filter(|name| *name != prepared.conn.name);
            let target = match (other, fallback.model.as_deref()) {
                (None, None) => Err(HostError::failed(format!(
                    "connection '{}': fallback {} names neither a connection nor a model",
                    prepared.conn.name,
                    n + 1
                ))),
                (Some(name), _) => self.prepared_by_name(program, name),
                (None, Some(_)) => Ok(Arc::clone(&prepared)),
            };
            legs.push(Leg {
                name: other.unwrap_or(&prepared.conn.name).to_string(),
                target,
                model: fallback.model.clone(),
                other: other.is_some(),
            });
        }
        let call = Call {
            client: self.client.clone(),
            prices: Arc::clone(&self.prices),
            budget: Arc::clone(&self.budget),
            fallback_on: prepared.fallback_on.clone(),
            legs,
        };
        Box::pin(call.run(request))
    }
}

/// One connection (and model) a call may be answered by: the named connection first, then
/// its fallbacks in order.
struct Leg {
    /// The connection's name.
    name: String,
    /// The resolved connection, or why it cannot be used.
    target: Result<Arc<Prepared>, HostError>,
    /// The fallback's model, when it names one.
    model: Option<String>,
    /// Whether this is a connection other than the named one.
    other: bool,
}

/// Takes the connection's secrets out of a reply: a server that echoes the key it was sent
/// (in its text, a tool call's arguments, …) must not hand it to the program, its emits or a
/// recording.
fn redact_response(conn: &Resolved, response: &mut ChatResponse) {
    response.text = conn.redact(&response.text);
    response.model = conn.redact(&response.model);
    if let Some(reason) = response.finish_reason.as_mut() {
        *reason = conn.redact(reason);
    }
    for call in &mut response.tool_calls {
        call.id = conn.redact(&call.id);
        call.name = conn.redact(&call.name);
        redact_json(conn, &mut call.arguments, 0);
    }
}

fn redact_json(conn: &Resolved, value: &mut serde_json::Value, depth: usize) {
    match value {
        serde_json::Value::String(text) => *text = conn.redact(text),
        serde_json::Value::Array(items) if depth < 128 => {
            for item in items {
                redact_json(conn, item, depth + 1);
            }
        }
        serde_json::Value::Object(map) if depth < 128 => {
            for item in map.values_mut() {
                redact_json(conn, item, depth + 1);
            }
            // A key holding a secret (rare) is renamed; the others keep their place.
            let leaking: Vec<String> = map
                .keys()
                .filter(|key| conn.redact(key) != **key)
                .cloned()
                .collect();
            for key in leaking {
                if let Some(item) = map.remove(&key) {
                    map.insert(conn.redact(&key), item);
                }
            }
        }
        _ => {}
    }
}

/// Everything one call needs, owned (the future outlives `chat`'s borrow of `self`).
struct Call {
    client: HttpClient,
    prices: Arc<PriceTable>,
    budget: Arc<RetryBudget>,
    /// The failures that move the call to the next leg (empty: all four kinds).
    fallback_on: Vec<FallbackOn>,
    legs: Vec<Leg>,
}

/// How one leg of a call failed: the error, and the last attempt's failure when the provider
/// was reached (only those may move the call on to a fallback).
struct LegError {
    error: HostError,
    failure: Option<Failure>,
}

impl From<HostError> for LegError {
    fn from(error: HostError) -> LegError {
        LegError {
            error,
            failure: None,
        }
    }
}

/// Counted across the legs of one call.
struct Progress {
    attempts: u32,
    /// When the call was taken.
    begun: Instant,
    /// When the first attempt was sent (after its limit wait).
    started: Option<Instant>,
    /// Time spent waiting for limits, in retry delays, and in the attempts' exchanges.
    queued: Duration,
    delayed: Duration,
    exchanging: Duration,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            attempts: 0,
            begun: Instant::now(),
            started: None,
            queued: Duration::ZERO,
            delayed: Duration::ZERO,
            exchanging: Duration::ZERO,
        }
    }

    /// The call's timing, now that `answer` (the answering attempt's clock) answered.
    fn timing(&self, answer: &AttemptClock) -> CallTiming {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let total = self.begun.elapsed();
        let since_sent = |at: Option<Instant>| {
            answer
                .sent
                .zip(at)
                .map(|(sent, at)| us(at.saturating_duration_since(sent)))
        };
        CallTiming {
            total_us: us(total),
            queue_us: us(self.queued),
            connect_us: answer.connect.map(us),
            ttfb_us: since_sent(answer.head),
            first_token_us: since_sent(answer.first_token),
            overhead_us: us(total
                .saturating_sub(self.queued)
                .saturating_sub(self.delayed)
                .saturating_sub(self.exchanging)),
        }
    }
}

fn with_kind(kind: HostErrorKind, message: String) -> HostError {
    HostError {
        kind,
        message,
        provider: None,
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "attempt" } else { "attempts" }
}

/// The fallback kind of a failure, if it is one that may move a call on.
fn fallback_kind(failure: &Failure) -> Option<FallbackOn> {
    match failure {
        Failure::Status { status: 429, .. } => Some(FallbackOn::RateLimited),
        Failure::Status { status, .. } if (500..=599).contains(status) => {
            Some(FallbackOn::ServerError)
        }
        Failure::Provider(_) => Some(FallbackOn::ServerError),
        Failure::Timeout(_) => Some(FallbackOn::Timeout),
        Failure::Transport(_) | Failure::Incomplete(_) => Some(FallbackOn::ConnectionFailed),
        Failure::Status { .. } | Failure::Invalid(_) | Failure::Setup(_) => None,
    }
}

impl Call {
    async fn run(self, request: ChatRequest) -> Result<ChatResponse, HostError> {
        let mut progress = Progress::new();
        // The failures so far, one text per leg tried (secrets redacted).
        let mut tried: Vec<String> = Vec::new();
        let mut last: Option<LegError> = None;
        for (index, leg) in self.legs.iter().enumerate() {
            if let Some(previous) = last.take() {
                let kind = previous.failure.as_ref().and_then(fallback_kind);
                let allowed = kind
                    .is_some_and(|k| self.fallback_on.is_empty() || self.fallback_on.contains(&k));
                if !allowed {
                    return Err(combined(previous.error, &tried));
                }
                let next = leg_name(leg, index);
                if !self.budget.try_take() {
                    let mut error = combined(previous.error, &tried);
                    error.message = format!(
                        "{}; {next} was not tried: the retry budget is exhausted (all {} retries allowed to this connection layer are used up)",
                        error.message,
                        self.budget.total()
                    );
                    return Err(error);
                }
                let target = match &leg.target {
                    Ok(target) => target,
                    Err(e) => {
                        let mut error = combined(previous.error, &tried);
                        error.kind = e.kind;
                        error.message =
                            format!("{}; {next} could not be used: {}", error.message, e.message);
                        return Err(error);
                    }
                };
                tracing::warn!(
                    fallback = target.conn.name.as_str(),
                    model = leg.model.as_deref().unwrap_or(""),
                    "LLM call failed; trying the next fallback"
                );
            }
            let target = match &leg.target {
                Ok(target) => target,
                Err(e) => return Err(e.clone()),
            };
            match self
                .run_leg(target, leg, index, &request, &mut progress)
                .await
            {
                Ok(mut response) => {
                    redact_response(&target.conn, &mut response);
                    response.attempts = progress.attempts;
                    if leg.other {
                        response.connection = Some(target.conn.name.clone());
                    }
                    return Ok(response);
                }
                Err(mut e) => {
                    e.error.message = target.conn.redact(&e.error.message);
                    if index > 0 {
                        tried.push(format!("{}: {}", leg_name(leg, index), e.error.message));
                    } else {
                        tried.push(e.error.message.clone());
                    }
                    last = Some(e);
                }
            }
        }
        match last {
            Some(e) => Err(combined(e.error, &tried)),
            None => Err(HostError::failed(
                "internal error: a call without a connection",
            )),
        }
    }

    /// One leg: the attempts on one connection, under its retry policy and limits.
    async fn run_leg(
        &self,
        prepared: &Prepared,
        leg: &Leg,
        fallback: usize,
        request: &ChatRequest,
        progress: &mut Progress,
    ) -> Result<ChatResponse, LegError> {
        let conn = &prepared.conn;
        let model = match (&leg.model, leg.other) {
            (Some(model), _) => model::resolve_model(&conn.config, Some(model), None),
            (None, true) => model::resolve_model(&conn.config, None, conn.default_model.as_deref())
                .or_else(|| model::resolve_model(&conn.config, request.model.as_deref(), None)),
            (None, false) => model::resolve_model(
                &conn.config,
                request.model.as_deref(),
                conn.default_model.as_deref(),
            ),
        };
        let Some(model) = model else {
            return Err(HostError::failed(format!(
                "agent '{}': no model to call: the agent names none and connection '{}' has no default_model",
                request.agent, conn.name
            ))
            .into());
        };
        let http = match &conn.target {
            Target::Http(http) => http,
            Target::Mock => {
                let span = attempt_span(&conn.name, "mock", &model, 1, fallback);
                let mut request = request.clone();
                request.model = Some(model);
                progress.attempts += 1;
                let sent = Instant::now();
                let mut response = span.in_scope(|| crate::mock::respond(&conn.config, &request));
                progress.exchanging += sent.elapsed();
                let clock = AttemptClock {
                    sent: Some(sent),
                    ..AttemptClock::default()
                };
                response.timing = Some(progress.timing(&clock));
                return Ok(response);
            }
        };
        let stream = request.stream.unwrap_or(conn.stream);
        let names = ToolNames::for_request(request, http.provider, conn.anthropic_structured);
        let body = wire::request_body(
            http.provider,
            &Outgoing {
                model: &model,
                request,
                stream,
                names: &names,
                anthropic_structured: conn.anthropic_structured,
                images: matches!(conn.provider_name.as_str(), "openai" | "anthropic"),
            },
        );
        let body = Bytes::from(serde_json::to_vec(&body).map_err(|e| {
            HostError::failed(format!(
                "connection '{}': the request body could not be encoded: {e}",
                conn.name
            ))
        })?);
        let mut policy = request.retry.unwrap_or(conn.retry);
        policy.max_attempts = policy.max_attempts.clamp(1, retry::MAX_ATTEMPTS);
        let timeout = request
            .timeout
            .filter(|t| !t.is_zero())
            .unwrap_or(conn.timeout);
        let reserve = match conn.limits.tokens_per_minute {
            Some(tpm) => token_reservation(request, u64::from(tpm)),
            None => 0,
        };

        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let waiting = Instant::now();
            let mut admission = match &prepared.limits {
                Some(limits) => Some(limits.admit(reserve).await.map_err(|e| match e {
                    AdmitError::TooManyTokens { reserved, limit } => HostError::limit(format!(
                        "connection '{}': the request needs about {reserved} tokens (estimated input + max_tokens), more than the limit of {limit} tokens per minute",
                        conn.name
                    )),
                    AdmitError::Closed => HostError::failed(format!(
                        "connection '{}': the concurrency limit is shut down",
                        conn.name
                    )),
                })?),
                None => None,
            };
            progress.queued += waiting.elapsed();
            // The attempt's span starts once the limits let it go: its bar is the exchange.
            let span = attempt_span(&conn.name, &conn.provider_name, &model, attempts, fallback);
            progress.attempts += 1;
            let start = *progress.started.get_or_insert_with(Instant::now);
            tracing::debug!(
                connection = conn.name.as_str(),
                agent = request.agent.as_str(),
                model = model.as_str(),
                attempt = attempts,
                stream,
                "sending LLM request"
            );
            let mut clock = AttemptClock::default();
            let exchange = Instant::now();
            let outcome = tracing::Instrument::instrument(
                tokio::time::timeout(
                    timeout,
                    client::attempt(
                        &self.client,
                        Attempt {
                            target: http,
                            body: body.clone(),
                            stream,
                            names: &names,
                        },
                        &mut clock,
                    ),
                ),
                span.clone(),
            )
            .await
            .unwrap_or(Err(Failure::Timeout(timeout)));
            progress.exchanging += exchange.elapsed();
            if let Err(failure) = &outcome {
                if let Failure::Status { status, .. } = failure {
                    span.record("http.response.status_code", i64::from(*status));
                }
                concerto_vm::spans::record_error(&span, &failure.error_type());
            }
            drop(span);
            let failure = match outcome {
                Ok(reply) => {
                    let usage = match reply.usage {
                        Some(usage) => usage,
                        None => wire::estimate_usage(request, &reply.text),
                    };
                    if let Some(admission) = admission.as_mut() {
                        admission
                            .settle_tokens(usage.input_tokens.saturating_add(usage.output_tokens));
                    }
                    drop(admission);
                    let answered_by = reply.model.clone().unwrap_or_else(|| model.clone());
                    let mut response = ChatResponse::text(reply.text, answered_by, usage);
                    response.provider = conn.provider_name.clone();
                    response.cost_usd = self
                        .prices
                        .cost(&response.model, &usage)
                        .or_else(|| self.prices.cost(&model, &usage));
                    response.tool_calls = reply.tool_calls;
                    response.finish_reason = reply.finish_reason;
                    response.attempts = attempts;
                    response.latency_ms =
                        u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
                    response.timing = Some(progress.timing(&clock));
                    return Ok(response);
                }
                Err(failure) => failure,
            };
            if matches!(failure, Failure::Status { .. }) {
                // A refused request consumed no tokens.
                if let Some(admission) = admission.as_mut() {
                    admission.settle_tokens(0);
                }
            }
            drop(admission);
            let final_error = |attempts: u32| {
                // A provider's refusal, rate limiting included, is the program's to handle
                // (an `AgentError` with kind `rate_limited` and the provider's retry-after).
                let kind = match &failure {
                    Failure::Timeout(_) => HostErrorKind::Timeout,
                    _ => HostErrorKind::Failed,
                };
                with_kind(
                    kind,
                    format!(
                        "connection '{}': {} after {attempts} {}: {}",
                        conn.name,
                        failure.headline(),
                        plural(attempts),
                        failure.detail()
                    ),
                )
                .with_provider(failure.provider_failure())
            };
            if !failure.is_transient() || attempts >= policy.max_attempts {
                return Err(LegError {
                    error: final_error(attempts),
                    failure: Some(failure),
                });
            }
            if !self.budget.try_take() {
                // The budget only stops the retrying: the call ends with the provider's
                // failure, which the program may handle like any other.
                let last = final_error(attempts);
                return Err(LegError {
                    error: with_kind(
                        last.kind,
                        format!(
                            "connection '{}': the retry budget is exhausted (all {} retries allowed to this connection layer are used up); last failure: {}",
                            conn.name,
                            self.budget.total(),
                            last.message
                        ),
                    )
                    .with_provider(failure.provider_failure()),
                    failure: Some(failure),
                });
            }
            let delay = retry::next_delay(&policy, attempts, failure.retry_after());
            tracing::warn!(
                connection = conn.name.as_str(),
                agent = request.agent.as_str(),
                attempt = attempts,
                failure = %format!("{}: {}", failure.headline(), failure.detail()),
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "LLM request failed; retrying"
            );
            if !delay.is_zero() {
                let sleeping = Instant::now();
                tokio::time::sleep(delay).await;
                progress.delayed += sleeping.elapsed();
            }
        }
    }
}

/// How a fallback leg is named in messages.
fn leg_name(leg: &Leg, index: usize) -> String {
    let connection = &leg.name;
    match &leg.model {
        Some(model) => format!("fallback {index} (connection '{connection}', model '{model}')"),
        None => format!("fallback {index} (connection '{connection}')"),
    }
}

/// The last error of a call, its message listing every leg's failure when there were
/// several (the provider details stay the last failure's).
fn combined(mut last: HostError, tried: &[String]) -> HostError {
    if tried.len() > 1 {
        last.message = tried.join("; then ");
    }
    last
}

/// Tokens reserved against a tokens-per-minute limit `tpm` before an attempt: the
/// estimated input plus `max_tokens` (or, without it, [`DEFAULT_OUTPUT_RESERVE`] cut to
/// what the limit leaves).
fn token_reservation(request: &ChatRequest, tpm: u64) -> u64 {
    let input = wire::estimate_usage(request, "").input_tokens;
    let output = match request.max_tokens {
        Some(max) => max,
        None => DEFAULT_OUTPUT_RESERVE.min(tpm.saturating_sub(input)),
    };
    input.saturating_add(output)
}

/// How long the connection layer waits for one attempt when nothing else says.
pub const DEFAULT_TIMEOUT: Duration = crate::config::DEFAULT_TIMEOUT;

/// The span of one attempt on one connection (a child of the agent call's request span,
/// made in the VM): which connection and model, which attempt (retries are the second and
/// later), which fallback (0: the call's own connection), and how it ended.
fn attempt_span(
    connection: &str,
    provider: &str,
    model: &str,
    attempt: u32,
    fallback: usize,
) -> tracing::Span {
    tracing::info_span!(
        target: concerto_vm::spans::TARGET,
        "llm_attempt",
        otel.kind = "client",
        otel.name = %format_args!("chat {model}"),
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = provider,
        gen_ai.request.model = model,
        concerto.connection = connection,
        concerto.attempt = concerto_vm::spans::int(attempt),
        concerto.fallback = concerto_vm::spans::int(fallback),
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        concerto.connect_us = tracing::field::Empty,
        concerto.ttfb_us = tracing::field::Empty,
        concerto.first_token_us = tracing::field::Empty,
    )
}
