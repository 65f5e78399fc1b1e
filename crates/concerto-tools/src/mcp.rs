//! MCP servers declared by the program (`mcp Name { ... }` blocks), reached through the
//! official Rust SDK, [`rmcp`], in the client role.
//!
//! An `mcp` block is an entry of `program.connections` whose `config.type` is `"mcp"`
//! (ir-format.md §10(b)). Its fields:
//!
//! | field | meaning |
//! |---|---|
//! | `transport` | `stdio` (a child process), or `http` / `streamable-http` (the streamable-HTTP transport at `url`); inferred from `command` / `url` when absent; `sse` is refused when the program loads (see below) |
//! | `command` | program and arguments, one string split with POSIX shell quoting rules (never run through a shell), or an array of strings |
//! | `args` | more arguments (array of strings) |
//! | `env` | object of variables set for the child (`null` removes one); values never appear in messages |
//! | `cwd` | working directory of the child |
//! | `url` | endpoint of an HTTP server |
//! | `headers` | object of extra HTTP request headers |
//! | `timeout` | seconds allowed for the handshake and for each request (default 60) |
//! | `tools` | the declared tool signatures (used by [`declared_params`] and checked by [`McpClients::specs`]) |
//!
//! [`McpClients`] keeps one session per (program, server), opened on first use. A child's
//! stderr is captured (logged at `debug`, its last lines quoted in error messages), so it
//! never mixes with the program's output. A session whose server died or whose connection
//! dropped is replaced on the next call; the call that saw it die fails. A streamable-HTTP
//! server that no longer knows the session (it restarted, or the session expired: 404, or 400
//! with a JSON-RPC error without an `id`) gets a new session at once and the request is sent
//! again. `transport = "sse"`, the older HTTP+SSE transport (MCP 2024-11-05), has no client
//! in `rmcp`: a program naming it does not load (the error names the transport and the
//! alternatives, `http` and `stdio`).
//!
//! Permissions are checked by the caller before it reaches this module.

mod config;
mod connect;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use concerto_vm::host::{HostError, HostErrorKind, Program, ToolSpec};
use rmcp::ServiceError;
use rmcp::model::{CallToolRequestParams, CallToolResult, ContentBlock, ResourceContents, Tool};
use serde_json::Value;

use crate::ToolFailure;
use config::ServerConfig;
use connect::{Session, StderrTail};

/// How long [`McpClients::shutdown`] waits for one server to close.
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The MCP client sessions of one runtime: one live session per (program, server),
/// connected lazily on first use and kept until [`McpClients::shutdown`], until the
/// program is dropped, or until the server dies (then reconnected on the next use).
#[derive(Default)]
pub struct McpClients {
    base_dir: Option<std::path::PathBuf>,
    /// Variables of the runtime's environment a stdio server may inherit besides the base
    /// ones ([`crate::child_env`]).
    env_allowed: Vec<String>,
    /// Hosts a server's URL (and every redirect) may go to; `None`: any.
    net: Option<Arc<crate::NetCheck>>,
    slots: parking_lot::Mutex<HashMap<(usize, String), Entry>>,
    http: parking_lot::Mutex<Option<reqwest::Client>>,
    /// Redirects the HTTP client refused, so that a handshake they broke says so.
    refused: Arc<connect::RefusedRedirects>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for McpClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let servers: Vec<String> = self.slots.lock().keys().map(|(_, s)| s.clone()).collect();
        f.debug_struct("McpClients")
            .field("servers", &servers)
            .finish_non_exhaustive()
    }
}

/// The session slot of one (program, server).
struct Entry {
    program: Weak<Program>,
    slot: Arc<Slot>,
}

struct Slot {
    config: ServerConfig,
    /// The live session; the lock is held while connecting, so one connection is made at
    /// a time, and only briefly otherwise (requests run on a shared handle).
    live: tokio::sync::Mutex<Option<Arc<Live>>>,
}

/// One connected session.
struct Live {
    id: u64,
    session: Session,
    stderr: Option<Arc<StderrTail>>,
    /// The server's tools, listed once per session (refreshed when a call names a tool
    /// that is not in the list).
    tools: parking_lot::Mutex<Option<Arc<Vec<Tool>>>>,
}

impl McpClients {
    /// No sessions yet.
    pub fn new() -> McpClients {
        McpClients::default()
    }

    /// Resolves a stdio server's relative paths against `dir` (the folder of the program the
    /// user named), as [`HostAgents::with_base_dir`](crate::hosts::HostAgents::with_base_dir)
    /// does for host agents.
    pub fn with_base_dir(mut self, dir: impl Into<std::path::PathBuf>) -> McpClients {
        self.base_dir = Some(dir.into());
        self
    }

    /// Lets servers over HTTP reach only hosts `allowed` accepts, their URL and every
    /// redirect hop alike (a refusal is a not-enabled error naming the host and
    /// `--allow-net`); without it any host may be reached.
    pub fn with_net_allowed(mut self, allowed: Arc<crate::NetCheck>) -> McpClients {
        self.net = Some(allowed);
        self
    }

    /// Lets stdio servers inherit the runtime's variables matching `patterns` (`NAME` or
    /// `PREFIX*`) besides the base ones (see [`crate::child_env`]).
    pub fn with_env_allowed(mut self, patterns: Vec<String>) -> McpClients {
        self.env_allowed = patterns;
        self
    }

    /// The server's tools as offered to a model: names `Server::tool`, the tool's
    /// description, and its `inputSchema` as the parameters. Fails when the server does not
    /// provide a tool the program declares for it.
    pub async fn specs(
        &self,
        program: &Arc<Program>,
        server: &str,
    ) -> Result<Vec<ToolSpec>, HostError> {
        let ctx = format!("MCP server `{server}`");
        let slot = self.slot(program, server)?;
        let live = self.live(&slot, &ctx).await?;
        let tools = slot.tools(&live, false, &ctx).await?;
        let declared = config::declared_tools(program, server);
        let missing: Vec<&str> = declared
            .iter()
            .filter(|d| !tools.iter().any(|t| t.name == d.as_str()))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(HostError::failed(format!(
                "{ctx} does not provide {} the program declares: {} (it offers: {})",
                if missing.len() == 1 {
                    "a tool"
                } else {
                    "tools"
                },
                quoted(missing.iter().copied()),
                offered(&tools)
            )));
        }
        // The block's signatures are the program's interface to the server: when it declares
        // any, only those are offered to a model (a server may offer far more than the
        // program means to use).
        Ok(tools
            .iter()
            .filter(|tool| declared.is_empty() || declared.iter().any(|d| *d == tool.name))
            .map(|tool| ToolSpec {
                name: format!("{server}::{}", tool.name),
                description: tool
                    .description
                    .as_deref()
                    .or(tool.title.as_deref())
                    .unwrap_or_default()
                    .to_string(),
                parameters: Value::Object((*tool.input_schema).clone()),
            })
            .collect())
    }

    /// Calls tool `tool` of server `server` with the JSON object `args` (`null` means no
    /// arguments).
    ///
    /// `Ok(Ok(value))` is the result: its `structuredContent` when present, else its text
    /// content joined with newlines (a string). `Ok(Err(failure))` is a failure the tool
    /// reported (`isError`), with its text. `Err` when the server cannot be started or
    /// reached, the handshake or the protocol fails, the tool does not exist, or the server
    /// does not answer within the block's `timeout` ([`HostErrorKind::Timeout`]).
    pub async fn call(
        &self,
        program: &Arc<Program>,
        server: &str,
        tool: &str,
        args: Value,
    ) -> Result<Result<Value, ToolFailure>, HostError> {
        let ctx = format!("MCP server `{server}`, tool `{tool}`");
        let arguments = match args {
            Value::Object(map) => map,
            Value::Null => serde_json::Map::new(),
            other => {
                return Err(HostError::failed(format!(
                    "{ctx}: the arguments must be a JSON object, not {}",
                    config::kind(&other)
                )));
            }
        };
        let slot = self.slot(program, server)?;
        let live = self.live(&slot, &ctx).await?;
        if !slot
            .tools(&live, false, &ctx)
            .await?
            .iter()
            .any(|t| t.name == tool)
        {
            let tools = slot.tools(&live, true, &ctx).await?;
            if !tools.iter().any(|t| t.name == tool) {
                return Err(HostError::failed(format!(
                    "MCP server `{server}` has no tool `{tool}` (it offers: {})",
                    offered(&tools)
                )));
            }
        }
        let params = CallToolRequestParams::new(tool.to_string()).with_arguments(arguments);
        let timeout = slot.config.timeout;
        match tokio::time::timeout(timeout, live.session.peer().call_tool(params)).await {
            Err(_) => Err(HostError {
                kind: HostErrorKind::Timeout,
                message: format!(
                    "{ctx}: no answer within {} (the block's `timeout`)",
                    connect::seconds(timeout)
                ),
                provider: None,
            }),
            Ok(Err(e)) => Err(slot.request_failed(&live, e, &ctx).await),
            Ok(Ok(result)) => Ok(tool_result(result)),
        }
    }

    /// Closes every session: HTTP sessions are ended, child processes have their stdin
    /// closed and are terminated if they do not exit. Waits for them (at most a few
    /// seconds each, in parallel). The clients stay usable: a later call connects again.
    pub async fn shutdown(&self) {
        let slots: Vec<Arc<Slot>> = self.slots.lock().drain().map(|(_, e)| e.slot).collect();
        let mut closing = tokio::task::JoinSet::new();
        for slot in slots {
            closing.spawn(async move { slot.close().await });
        }
        while closing.join_next().await.is_some() {}
    }

    /// The slot of (`program`, `server`), created (with its configuration read) on first
    /// use.
    fn slot(&self, program: &Arc<Program>, server: &str) -> Result<Arc<Slot>, HostError> {
        let key = (Arc::as_ptr(program) as usize, server.to_string());
        let mut slots = self.slots.lock();
        // Sessions of dropped programs end here (and a dead program's address may be
        // reused by a new one, so only live entries may match).
        slots.retain(|_, entry| entry.program.strong_count() > 0);
        if let Some(entry) = slots.get(&key) {
            return Ok(entry.slot.clone());
        }
        let config = config::server_config(program, server)?;
        let slot = Arc::new(Slot {
            config,
            live: tokio::sync::Mutex::new(None),
        });
        slots.insert(
            key,
            Entry {
                program: Arc::downgrade(program),
                slot: slot.clone(),
            },
        );
        Ok(slot)
    }

    /// The slot's live session, connecting (again) when there is none or it died.
    async fn live(&self, slot: &Slot, ctx: &str) -> Result<Arc<Live>, HostError> {
        let mut guard = slot.live.lock().await;
        if let Some(live) = guard.as_ref() {
            if !live.session.is_closed() && !live.session.peer().is_transport_closed() {
                return Ok(live.clone());
            }
            tracing::debug!(target: "concerto::mcp", server = %slot.config.name, "session closed; reconnecting");
        }
        // Drop a dead session before starting its successor.
        *guard = None;
        let connected = connect::connect(
            &slot.config,
            self.base_dir.as_deref(),
            &self.env_allowed,
            self.net.as_deref(),
            || self.http_client(),
            &self.refused,
            ctx,
        )
        .await?;
        let live = Arc::new(Live {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            session: connected.session,
            stderr: connected.stderr,
            tools: parking_lot::Mutex::new(None),
        });
        *guard = Some(live.clone());
        Ok(live)
    }

    fn http_client(&self) -> Result<reqwest::Client, HostError> {
        let mut http = self.http.lock();
        if let Some(client) = http.as_ref() {
            return Ok(client.clone());
        }
        let client = connect::build_http_client(self.net.clone(), self.refused.clone())?;
        *http = Some(client.clone());
        Ok(client)
    }
}

impl Slot {
    /// The server's tools (listed once per session, or again when `refresh`).
    async fn tools(
        &self,
        live: &Live,
        refresh: bool,
        ctx: &str,
    ) -> Result<Arc<Vec<Tool>>, HostError> {
        if !refresh && let Some(tools) = live.tools.lock().as_ref() {
            return Ok(tools.clone());
        }
        let timeout = self.config.timeout;
        let tools = match tokio::time::timeout(timeout, live.session.peer().list_all_tools()).await
        {
            Err(_) => {
                return Err(HostError {
                    kind: HostErrorKind::Timeout,
                    message: format!(
                        "{ctx}: listing the tools got no answer within {} (the block's `timeout`)",
                        connect::seconds(timeout)
                    ),
                    provider: None,
                });
            }
            Ok(Err(e)) => return Err(self.request_failed(live, e, ctx).await),
            Ok(Ok(tools)) => Arc::new(tools),
        };
        *live.tools.lock() = Some(tools.clone());
        Ok(tools)
    }

    /// The error for a failed request; a lost connection also retires the session so
    /// that the next use reconnects.
    async fn request_failed(&self, live: &Live, err: ServiceError, ctx: &str) -> HostError {
        match err {
            ServiceError::McpError(data) => HostError::failed(format!(
                "{ctx}: the server answered with error {}: {}",
                data.code.0, data.message
            )),
            ServiceError::Timeout { timeout } => HostError {
                kind: HostErrorKind::Timeout,
                message: format!("{ctx}: no answer within {}", connect::seconds(timeout)),
                provider: None,
            },
            ServiceError::UnexpectedResponse => HostError::failed(format!(
                "{ctx}: unexpected response from the server (asking for input or starting a task is not supported)"
            )),
            other => {
                let lost = matches!(
                    other,
                    ServiceError::TransportClosed | ServiceError::TransportSend(_)
                ) || live.session.peer().is_transport_closed();
                if !lost {
                    return HostError::failed(format!("{ctx}: {}", connect::error_chain(&other)));
                }
                self.retire(live.id).await;
                let stderr = match &live.stderr {
                    Some(tail) => {
                        tail.settle().await;
                        tail.render()
                    }
                    None => String::new(),
                };
                HostError::failed(format!(
                    "{ctx}: the connection to {} was lost ({}); the next call reconnects{stderr}",
                    self.config.endpoint(),
                    connect::error_chain(&other)
                ))
            }
        }
    }

    /// Drops session `id` if it is still the current one.
    async fn retire(&self, id: u64) {
        let mut guard = self.live.lock().await;
        if guard.as_ref().is_some_and(|live| live.id == id) {
            *guard = None;
        }
    }

    /// Ends the session, waiting for it to close when no request still uses it.
    async fn close(&self) {
        let Some(live) = self.live.lock().await.take() else {
            return;
        };
        live.session.cancellation_token().cancel();
        if let Ok(mut live) = Arc::try_unwrap(live)
            && live
                .session
                .close_with_timeout(SHUTDOWN_WAIT)
                .await
                .is_err()
        {
            tracing::debug!(target: "concerto::mcp", server = %self.config.name, "session task failed while closing");
        }
    }
}

/// A `tools/call` result as the program sees it.
fn tool_result(result: CallToolResult) -> Result<Value, ToolFailure> {
    if result.is_error == Some(true) {
        let text = content_text(&result.content);
        return Err(ToolFailure::new(if !text.is_empty() {
            text
        } else if let Some(value) = result.structured_content.as_ref() {
            value.to_string()
        } else {
            "the tool reported an error without a message".to_string()
        }));
    }
    match result.structured_content {
        Some(value) => Ok(value),
        None => Ok(Value::String(content_text(&result.content))),
    }
}

/// The text of a result's content blocks, one per line. Non-text blocks are named rather
/// than dropped silently.
fn content_text(content: &[ContentBlock]) -> String {
    content
        .iter()
        .map(|block| match block {
            ContentBlock::Text(text) => text.text.clone(),
            ContentBlock::Resource(res) => match &res.resource {
                ResourceContents::TextResourceContents { text, .. } => text.clone(),
                ResourceContents::BlobResourceContents { uri, mime_type, .. } => format!(
                    "[binary resource {uri}{}]",
                    mime_type
                        .as_deref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                ),
                _ => "[unsupported resource]".to_string(),
            },
            ContentBlock::Image(image) => format!("[image ({})]", image.mime_type),
            ContentBlock::Audio(audio) => format!("[audio ({})]", audio.mime_type),
            ContentBlock::ResourceLink(link) => format!("[resource {}]", link.uri),
            _ => "[unsupported content]".to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn quoted<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn offered(tools: &[Tool]) -> String {
    if tools.is_empty() {
        "no tools".to_string()
    } else {
        quoted(tools.iter().map(|t| t.name.as_ref()))
    }
}

/// What enabling MCP server `server` of `program` would start or reach (`would start
/// `cmd args`` or `would connect to URL`), for a refusal; `None` when its block is invalid.
pub fn launch(program: &Program, server: &str) -> Option<String> {
    config::server_config(program, server)
        .ok()
        .map(|c| c.launch())
}

/// The parameter names the program declares for tool `tool` of MCP server `server`, in
/// declaration order, so that positional arguments (`Git.search("x", 5)`) can be turned
/// into the named arguments MCP expects (`{"query": "x", "max": 5}`). `None` when the
/// program declares no such server or tool.
pub fn declared_params(program: &Program, server: &str, tool: &str) -> Option<Vec<String>> {
    config::declared_params(program, server, tool)
}
