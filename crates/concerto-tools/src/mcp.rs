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
//! | `tools` | the declared tool signatures: `[{name, params: [{name, type}], return_type}]` (see below and [`declared_params`]) |
//!
//! ## Declared tools
//!
//! A declared tool is the server's tool of that name; when the server has none by that
//! exact name, the one whose name becomes the declared name once every character that
//! cannot appear in a Concerto identifier (anything but ASCII letters, digits and `_`) is
//! replaced with `_`: `fn get_sum` calls `get-sum`, and the request carries the server's
//! name. Two such tools (`a-b` and `a.b` for `a_b`) are an error naming both. The same rule
//! finds any name [`McpClients::call`] is given, declared or not, and [`McpClients::specs`]
//! offers a model the declared tools under their declared names (every tool of the server
//! under its own name when the block declares none).
//!
//! When a session lists the server's tools (once, at the first use), every declared
//! signature is checked against its tool's schemas: each declared parameter must be in the
//! `inputSchema`'s `properties` with a compatible type, each parameter the schema requires
//! must be declared and not as an `Option<…>`, and when the tool has an `outputSchema` the
//! declared return type (`T` of `Result<T, ToolError>`) must be compatible with it.
//! Compatible: `Int` with `integer` or `number`, `Float` with `number`, `String` with
//! `string`, `Bool` with `boolean`, `Array<…>` with `array`, `Map<…>` and structs with
//! `object`, `Option<T>` as `T`; `Any`, enums and schema properties without a type accept
//! anything (a type list or `anyOf` / `oneOf` allows each of its types). A mismatch names the
//! tool, the parameter and both types; calling that tool fails with it, as does
//! [`McpClients::specs`] (an agent offered the server fails), and both are
//! [`HostErrorKind::Type`]. Only the return type's top level is compared, not struct fields.
//!
//! A successful result converts to the declared return type: an object (struct or
//! `Map<…>`) or an `Array<…>` from the structured content, or from text that parses as
//! JSON of that kind when there is none; a `String` from the text content (blocks joined
//! with newlines); an `Int`, `Float` or `Bool` from text that parses exactly (`41`, `4.5`,
//! `true`; never `4.0` or ` 4` for an `Int`). An undeclared tool gives its structured
//! content, else its text. A result that does not convert is a [`HostErrorKind::Type`]
//! error saying what the result was. A failure the tool reports (`isError`) is never
//! converted.
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
mod images;
mod signature;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use concerto_vm::host::{HostError, HostErrorKind, ImagePart, Program, ToolSpec};
use rmcp::ServiceError;
use rmcp::model::{CallToolRequestParams, CallToolResult, ContentBlock, ResourceContents, Tool};
use serde_json::Value;

use crate::ToolFailure;
use config::ServerConfig;
use connect::{Session, StderrTail};
use signature::{Declared, Resolved, Ty};

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
    /// The host's values of variables (an env file), over the process's own.
    env_values: Vec<(String, String)>,
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
    /// The tool signatures the block declares.
    declared: Vec<Declared>,
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
    /// that is not in the list), and how the declared signatures matched them.
    tools: parking_lot::Mutex<Option<Arc<Listing>>>,
}

/// The server's tools and, for each declared signature (in the order of
/// [`Slot::declared`]), the index of its server tool or why there is none.
struct Listing {
    tools: Vec<Tool>,
    matched: Vec<Result<usize, Unmatched>>,
}

/// Why a declared tool has no usable server tool.
enum Unmatched {
    /// No server tool has the name, exactly or in identifier form.
    Missing,
    /// Several server tools have it in identifier form (their names).
    Ambiguous(Vec<String>),
    /// The server tool (its index) has schemas that disagree with the declaration (one
    /// sentence each).
    Mismatch(usize, Vec<String>),
}

impl Listing {
    fn new(tools: Vec<Tool>, declared: &[Declared]) -> Listing {
        let matched = declared
            .iter()
            .map(|decl| match signature::resolve(&tools, &decl.name) {
                Resolved::Missing => Err(Unmatched::Missing),
                Resolved::Ambiguous(names) => Err(Unmatched::Ambiguous(
                    names.into_iter().map(String::from).collect(),
                )),
                Resolved::Found(i) => {
                    let problems = signature::check(decl, &tools[i]);
                    if problems.is_empty() {
                        Ok(i)
                    } else {
                        Err(Unmatched::Mismatch(i, problems))
                    }
                }
            })
            .collect();
        Listing { tools, matched }
    }

    /// The server's name of the tool the program calls `name` (`decl`: its index among the
    /// declared signatures); `Ok(None)` when there is none; `Err` when the name is ambiguous
    /// or the declaration does not match.
    fn target(
        &self,
        decl: Option<usize>,
        name: &str,
        ctx: &str,
    ) -> Result<Option<String>, HostError> {
        let ambiguous = |names: &[&str]| {
            HostError::failed(format!(
                "{ctx}: the name matches more than one of the server's tools once their characters that cannot appear in a Concerto identifier become `_`: {}; rename the declaration to one of them exactly",
                quoted(names.iter().copied())
            ))
        };
        let Some(i) = decl else {
            return match signature::resolve(&self.tools, name) {
                Resolved::Found(i) => Ok(self.tools.get(i).map(|t| t.name.to_string())),
                Resolved::Missing => Ok(None),
                Resolved::Ambiguous(names) => Err(ambiguous(&names)),
            };
        };
        match self.matched.get(i) {
            Some(Ok(index)) => Ok(self.tools.get(*index).map(|t| t.name.to_string())),
            Some(Err(Unmatched::Ambiguous(names))) => Err(ambiguous(
                &names.iter().map(String::as_str).collect::<Vec<_>>(),
            )),
            Some(Err(Unmatched::Mismatch(index, problems))) => {
                let server_name = self.tools.get(*index).map_or(name, |t| t.name.as_ref());
                Err(mismatch(ctx, name, server_name, problems))
            }
            Some(Err(Unmatched::Missing)) | None => Ok(None),
        }
    }
}

/// The error for a declaration (of `name`) that disagrees with the schemas of the server's
/// tool `server_name`.
fn mismatch(ctx: &str, name: &str, server_name: &str, problems: &[String]) -> HostError {
    let which = if name == server_name {
        String::new()
    } else {
        format!(" (the server's `{server_name}`)")
    };
    HostError {
        kind: HostErrorKind::Type,
        message: format!(
            "{ctx}: the declared signature does not match the server's{which}: {}",
            problems.join("; ")
        ),
        provider: None,
    }
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

    /// The host's view of variables that differs from this process's environment (an env
    /// file): an allowed one is inherited with this value (see [`crate::child_env`]).
    pub fn with_env_values(mut self, values: Vec<(String, String)>) -> McpClients {
        self.env_values = values;
        self
    }

    /// The server's tools as offered to a model: names `Server::tool` (the declared names
    /// when the block declares tools, and then only those), the tool's description, and its
    /// `inputSchema` as the parameters. Fails when the server does not provide a tool the
    /// program declares for it, when a declared name is ambiguous, or when a declared
    /// signature disagrees with the server's schemas.
    pub async fn specs(
        &self,
        program: &Arc<Program>,
        server: &str,
    ) -> Result<Vec<ToolSpec>, HostError> {
        let ctx = format!("MCP server `{server}`");
        let slot = self.slot(program, server)?;
        let live = self.live(&slot, &ctx).await?;
        let listing = slot.tools(&live, false, &ctx).await?;
        let tools = &listing.tools;
        let declared = &slot.declared;
        let missing: Vec<&str> = declared
            .iter()
            .zip(&listing.matched)
            .filter(|(_, m)| matches!(m, Err(Unmatched::Missing)))
            .map(|(d, _)| d.name.as_str())
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
                offered(tools)
            )));
        }
        let mut problems = Vec::new();
        for (i, decl) in declared.iter().enumerate() {
            let ctx = format!("MCP server `{server}`, tool `{}`", decl.name);
            if let Err(e) = listing.target(Some(i), &decl.name, &ctx) {
                problems.push(e);
            }
        }
        if !problems.is_empty() {
            let kind = if problems.iter().any(|e| e.kind == HostErrorKind::Type) {
                HostErrorKind::Type
            } else {
                HostErrorKind::Failed
            };
            let message = problems
                .into_iter()
                .map(|e| e.message)
                .collect::<Vec<_>>()
                .join("\n");
            return Err(HostError {
                kind,
                message,
                provider: None,
            });
        }
        let spec = |name: &str, tool: &Tool| ToolSpec {
            name: format!("{server}::{name}"),
            description: tool
                .description
                .as_deref()
                .or(tool.title.as_deref())
                .unwrap_or_default()
                .to_string(),
            parameters: Value::Object((*tool.input_schema).clone()),
        };
        // The block's signatures are the program's interface to the server: when it declares
        // any, only those are offered to a model (a server may offer far more than the
        // program means to use), under the names the program declares.
        if declared.is_empty() {
            return Ok(tools.iter().map(|tool| spec(&tool.name, tool)).collect());
        }
        Ok(declared
            .iter()
            .zip(&listing.matched)
            .filter_map(|(decl, matched)| {
                let tool = tools.get(*matched.as_ref().ok()?)?;
                Some(spec(&decl.name, tool))
            })
            .collect())
    }

    /// Calls tool `tool` of server `server` with the JSON object `args` (`null` means no
    /// arguments); `tool` is the name the program uses, found among the server's tools as
    /// the module docs say.
    ///
    /// `Ok(Ok(value))` is the result, converted to the declared return type (undeclared:
    /// its `structuredContent` when present, else its text content joined with newlines).
    /// `Ok(Err(failure))` is a failure the tool reported (`isError`), with its text. `Err`
    /// when the server cannot be started or reached, the handshake or the protocol fails,
    /// the tool does not exist or its name is ambiguous, the server does not answer within
    /// the block's `timeout` ([`HostErrorKind::Timeout`]), or the declared signature
    /// disagrees with the server's schemas or the result does not convert
    /// ([`HostErrorKind::Type`]).
    pub async fn call(
        &self,
        program: &Arc<Program>,
        server: &str,
        tool: &str,
        args: Value,
    ) -> Result<Result<Value, ToolFailure>, HostError> {
        Ok(self.call_inner(program, server, tool, args, false).await?.0)
    }

    /// [`McpClients::call`] for a model: the same result, but every image in it (image
    /// blocks, embedded image blobs, base64 images inside structured content) is taken out
    /// and returned beside it, a placeholder `[image (TYPE)]` standing in the text and the
    /// structured content, so that the model gets the images as images and never their
    /// data as text.
    pub async fn call_for_model(
        &self,
        program: &Arc<Program>,
        server: &str,
        tool: &str,
        args: Value,
    ) -> Result<(Result<Value, ToolFailure>, Vec<ImagePart>), HostError> {
        self.call_inner(program, server, tool, args, true).await
    }

    async fn call_inner(
        &self,
        program: &Arc<Program>,
        server: &str,
        tool: &str,
        args: Value,
        for_model: bool,
    ) -> Result<(Result<Value, ToolFailure>, Vec<ImagePart>), HostError> {
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
        let decl = slot.declared.iter().position(|d| d.name == tool);
        let target = match slot
            .tools(&live, false, &ctx)
            .await?
            .target(decl, tool, &ctx)?
        {
            Some(target) => target,
            None => {
                let listing = slot.tools(&live, true, &ctx).await?;
                match listing.target(decl, tool, &ctx)? {
                    Some(target) => target,
                    None => {
                        return Err(HostError::failed(format!(
                            "MCP server `{server}` has no tool `{tool}` (it offers: {})",
                            offered(&listing.tools)
                        )));
                    }
                }
            }
        };
        let (returns, returns_text) = match decl.and_then(|i| slot.declared.get(i)) {
            Some(d) => (d.returns.clone(), d.returns_text.clone()),
            None => (Ty::Any, String::new()),
        };
        let params = CallToolRequestParams::new(target).with_arguments(arguments);
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
            Ok(Ok(mut result)) => {
                let mut images = Vec::new();
                if for_model {
                    images = images::of_content(&result);
                    if let Some(structured) = result.structured_content.as_mut() {
                        images::take_from_structured(structured, &mut images, 0);
                    }
                    // A server may send an image both as a block and in structured
                    // content: the model sees it once.
                    let mut seen = std::collections::HashSet::new();
                    images.retain(|i| seen.insert((i.mime_type.clone(), i.data.clone())));
                }
                tool_result(result, &returns, &returns_text)
                    .map(|value| (value, images))
                    .map_err(|why| HostError {
                        kind: HostErrorKind::Type,
                        message: format!("{ctx}: {why}"),
                        provider: None,
                    })
            }
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
        let tools = program
            .connections
            .iter()
            .find(|c| c.name == server)
            .and_then(|c| c.config.get("tools"));
        let slot = Arc::new(Slot {
            config,
            declared: signature::declared(program, tools),
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
            (&self.env_allowed, &self.env_values),
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
    ) -> Result<Arc<Listing>, HostError> {
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
            Ok(Ok(tools)) => Arc::new(Listing::new(tools, &self.declared)),
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

/// A `tools/call` result as the program sees it: a failure the tool reported, or the
/// result converted to the declared payload type `returns` (written `returns_text`); `Err`
/// says why it does not convert.
fn tool_result(
    result: CallToolResult,
    returns: &Ty,
    returns_text: &str,
) -> Result<Result<Value, ToolFailure>, String> {
    if result.is_error == Some(true) {
        let text = content_text(&result.content);
        return Ok(Err(ToolFailure::new(if !text.is_empty() {
            text
        } else if let Some(value) = result.structured_content.as_ref() {
            value.to_string()
        } else {
            "the tool reported an error without a message".to_string()
        })));
    }
    signature::convert(&result, returns, returns_text).map(Ok)
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
            ContentBlock::Image(image) => images::placeholder(&image.mime_type),
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
