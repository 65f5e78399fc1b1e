//! Tools and the outside world for the Concerto VM: the implementation of its
//! [`ToolHost`] trait.
//!
//! [`Tools`] is the one door through which a program reaches anything outside its own
//! process, and the one permission model for all of it:
//!
//! | what | default | enabled by |
//! |---|---|---|
//! | the program's own `tool` declarations | run | — (any tool can be switched off: [`Permission::Disabled`]) |
//! | MCP servers (`mcp` blocks) | refused | [`Permission::AllMethods`] / [`Permission::Methods`] for the server's name |
//! | host agents (`host` declarations) | refused | a permission for the host's name |
//! | host-registered tools ([`Tools::register`]) | refused | a permission for the tool's name |
//! | `std::fs` | refused | allowed directories ([`Policy::fs_roots`]) |
//! | `std::http` | refused | allowed domains ([`Policy::net_domains`]) |
//!
//! A refusal is a catchable Concerto error naming what was denied and how to allow it.
//! File access goes through capability handles on the allowed directories (no `..`,
//! absolute-path or symlink escape), network access checks every redirect hop, and
//! processes (MCP stdio servers, host agents) are only spawned for a server or host the
//! host enabled by name.
//!
//! # Source layout
//! - this file: [`Tools`], [`Policy`], [`Permission`], host-registered tools.
//! - `error.rs`: the errors of the public functions, [`SandboxError`] and [`ToolFailure`].
//! - [`fs`]: sandboxed `std::fs`. [`http`]: sandboxed `std::http`.
//! - [`hosts`]: host agent processes. [`mcp`]: MCP servers through `rmcp`.
#![warn(missing_docs)]

mod error;
pub mod fs;
pub mod hosts;
#[cfg(feature = "http")]
pub mod http;
#[cfg(not(feature = "http"))]
#[path = "http_off.rs"]
pub mod http;
#[cfg(feature = "mcp")]
pub mod mcp;
#[cfg(not(feature = "mcp"))]
#[path = "mcp_off.rs"]
pub mod mcp;

pub use error::{SandboxError, ToolFailure};

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use concerto_vm::Value;
use concerto_vm::host::{
    BoxFuture, FsReply, FsRequest, HostError, HostSession, HttpReply, HttpRequest, OutsideError,
    Program, ToolHost, ToolOutput, ToolSpec,
};

/// What a tool may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permission {
    /// The tool cannot be called (its own program's tools included).
    Disabled,
    /// Every method may be called.
    AllMethods,
    /// Only these methods may be called.
    Methods(Vec<String>),
}

/// The permissions and sandbox of a run.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Per-tool permissions, by tool, MCP server, host or registered-tool name.
    /// `std::fs` and `std::http` may be listed too (only [`Permission::Disabled`] matters
    /// for them: what they may reach is decided by the roots and domains below).
    pub tools: HashMap<String, Permission>,
    /// Directories `std::fs` may read and write (inside, recursively).
    pub fs_roots: Vec<PathBuf>,
    /// Domains `std::http` may reach (`example.com`, `*.example.com`, `localhost`, IPs).
    pub net_domains: Vec<String>,
    /// Variables of the runtime's environment that MCP stdio servers and host agents
    /// inherit besides the base ones (`NAME` or `PREFIX*`; see [`child_env`]).
    pub env: Vec<String>,
    /// The host's view of the environment where it differs from this process's (the
    /// variables of an env file): a child inherits an allowed variable's value from here
    /// first, as the program reads it.
    pub env_values: Vec<(String, String)>,
}

/// The variables a child process (an MCP stdio server, a host agent) inherits from this
/// process's environment: `PATH`, `HOME`, `LANG`, `TMPDIR`, and those matching `allowed`
/// (`NAME`, or `PREFIX*` for every name starting with `PREFIX`). Nothing else: API keys and
/// the host's other secrets stay out. The variables its manifest entry declares are set on
/// top. An allowed variable of `values` (the host's view of the environment, such as an env
/// file) wins over the process's own, so a child sees what the program sees.
pub fn child_env(
    allowed: &[String],
    values: &[(String, String)],
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    const BASE: [&str; 4] = ["PATH", "HOME", "LANG", "TMPDIR"];
    let mut vars: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os()
        .filter(|(name, _)| {
            let Some(name) = name.to_str() else {
                return false;
            };
            BASE.contains(&name) || env_allowed(allowed, name)
        })
        .collect();
    for (name, value) in values {
        if env_allowed(allowed, name) {
            vars.retain(|(n, _)| n.to_str() != Some(name.as_str()));
            vars.push((name.into(), value.into()));
        }
    }
    vars
}

/// Says whether a host (as in a URL) and port may be reached: the `std::http` allow-list,
/// also applied to MCP servers over HTTP.
pub type NetCheck = dyn Fn(&str, u16) -> bool + Send + Sync;

/// Whether variable `name` matches one of `patterns`: `NAME` exactly, or `PREFIX*` for
/// every name starting with `PREFIX`.
pub fn env_allowed(patterns: &[String], name: &str) -> bool {
    patterns
        .iter()
        .map(|p| p.trim())
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => pattern == name,
        })
}

/// The handler of a host-registered tool method: JSON arguments in, JSON result (or a
/// [`ToolFailure`], which the caller sees as `Err(ToolError { message })`) out.
pub type ToolHandler = Arc<
    dyn Fn(serde_json::Value) -> BoxFuture<Result<serde_json::Value, ToolFailure>> + Send + Sync,
>;

/// One method of a host-registered tool.
#[derive(Clone)]
struct HostMethod {
    description: String,
    parameters: serde_json::Value,
    handler: ToolHandler,
}

/// The door to the outside world (see the crate documentation).
pub struct Tools {
    policy: Policy,
    fs: Arc<fs::FsSandbox>,
    http: Arc<http::HttpSandbox>,
    hosts: Arc<hosts::HostAgents>,
    mcp: Arc<mcp::McpClients>,
    registered: HashMap<String, Vec<(String, HostMethod)>>,
}

/// A child process's program, arguments and working directory, with relative paths
/// resolved against `base` (the folder of the program the user named), when there is one, and
/// then against the project folder above it (the nearest folder holding a `Concerto.toml`,
/// which paths in the manifest are written relative to): a relative working directory joins
/// the first of those where it exists (else `base`); a program with a slash, and an argument,
/// that name an existing file or folder in one of them are made absolute there. Anything else
/// is left as written (a program without a slash is looked up on `PATH`; other relative paths
/// stay relative to the working directory, the runtime's own when none is set).
pub(crate) fn resolve_paths(
    base: Option<&std::path::Path>,
    program: &str,
    args: &[String],
    cwd: Option<&str>,
) -> (String, Vec<String>, Option<String>) {
    let Some(base) = base else {
        return (program.to_string(), args.to_vec(), cwd.map(str::to_string));
    };
    let mut folders = vec![base.to_path_buf()];
    if let Some(project) = base
        .ancestors()
        .find(|dir| dir.join("Concerto.toml").is_file())
        && project != base
    {
        folders.push(project.to_path_buf());
    }
    let find = |text: &str| -> Option<String> {
        let path = std::path::Path::new(text);
        if text.is_empty() || text.starts_with('-') || !path.is_relative() {
            return None;
        }
        folders
            .iter()
            .map(|folder| folder.join(path))
            .find(|joined| joined.exists())
            .map(|joined| joined.to_string_lossy().into_owned())
    };
    let program = if program.contains('/') {
        find(program).unwrap_or_else(|| program.to_string())
    } else {
        program.to_string()
    };
    let args = args
        .iter()
        .map(|a| find(a).unwrap_or_else(|| a.clone()))
        .collect();
    let cwd = cwd.map(|dir| {
        if std::path::Path::new(dir).is_relative() {
            find(dir).unwrap_or_else(|| base.join(dir).to_string_lossy().into_owned())
        } else {
            dir.to_string()
        }
    });
    (program, args, cwd)
}

impl std::fmt::Debug for Tools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tools")
            .field("policy", &self.policy)
            .field("registered", &self.registered.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Tools {
    /// Resolves relative paths of host agents and stdio MCP servers (commands with a slash,
    /// arguments naming files, working directories) against `dir`, the folder of the program
    /// the user named (see [`HostAgents::with_base_dir`](hosts::HostAgents::with_base_dir)).
    /// Call before the first use.
    pub fn with_base_dir(mut self, dir: impl Into<PathBuf>) -> Tools {
        let dir = dir.into();
        let env = self.policy.env.clone();
        let values = self.policy.env_values.clone();
        self.hosts = Arc::new(
            hosts::HostAgents::new()
                .with_base_dir(dir.clone())
                .with_env_allowed(env.clone())
                .with_env_values(values.clone()),
        );
        let http = self.http.clone();
        self.mcp = Arc::new(
            mcp::McpClients::new()
                .with_base_dir(dir)
                .with_env_allowed(env)
                .with_env_values(values)
                .with_net_allowed(Arc::new(move |host: &str, port: u16| {
                    http.allows(host, port)
                })),
        );
        self
    }

    /// Tools under `policy`.
    ///
    /// # Errors
    /// The [`SandboxError`] of an allowed directory that does not exist, is not a directory
    /// or cannot be opened. (Allowed domains that cannot be parsed allow nothing and are
    /// logged, as [`HttpSandbox::new`](http::HttpSandbox::new) does.)
    pub fn new(policy: Policy) -> Result<Tools, SandboxError> {
        let fs = if policy.fs_roots.is_empty() {
            fs::FsSandbox::none()
        } else {
            fs::FsSandbox::new(&policy.fs_roots)?
        };
        let http = Arc::new(http::HttpSandbox::new(&policy.net_domains));
        let env = policy.env.clone();
        let values = policy.env_values.clone();
        let net: Arc<NetCheck> = {
            let http = http.clone();
            Arc::new(move |host: &str, port: u16| http.allows(host, port))
        };
        Ok(Tools {
            policy,
            fs: Arc::new(fs),
            http,
            hosts: Arc::new(
                hosts::HostAgents::new()
                    .with_env_allowed(env.clone())
                    .with_env_values(values.clone()),
            ),
            mcp: Arc::new(
                mcp::McpClients::new()
                    .with_env_allowed(env)
                    .with_env_values(values)
                    .with_net_allowed(net),
            ),
            registered: HashMap::new(),
        })
    }

    /// Registers method `method` of host tool `tool`, offered to models as `tool::method`
    /// with `description` and the JSON Schema `parameters`. Like everything that reaches
    /// outside the program, it runs only once `tool` is enabled in the [`Policy`]. A
    /// [`ToolFailure`] the handler returns (`Err("text".into())`) is `Err(ToolError)` for
    /// the caller.
    pub fn register<F, Fut>(
        &mut self,
        tool: &str,
        method: &str,
        description: &str,
        parameters: serde_json::Value,
        handler: F,
    ) where
        F: Fn(serde_json::Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<serde_json::Value, ToolFailure>> + Send + 'static,
    {
        let handler: ToolHandler = Arc::new(move |args| Box::pin(handler(args)));
        let methods = self.registered.entry(tool.to_string()).or_default();
        methods.retain(|(m, _)| m != method);
        methods.push((
            method.to_string(),
            HostMethod {
                description: description.to_string(),
                parameters,
                handler,
            },
        ));
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Closes host agent processes and MCP sessions gracefully, all at once (see
    /// [`HostAgents::shutdown`](hosts::HostAgents::shutdown) and
    /// [`McpClients::shutdown`](mcp::McpClients::shutdown)); returns when they are closed.
    /// The tools stay usable: a later call starts its process or session again.
    pub async fn shutdown(&self) {
        tokio::join!(self.hosts.shutdown(), self.mcp.shutdown());
    }

    fn permission(&self, tool: &str) -> Option<&Permission> {
        self.policy.tools.get(tool)
    }
}

/// What a tool name denotes.
#[derive(Clone, Copy)]
enum Kind {
    Own,
    Mcp,
    Host,
    Registered,
}

fn kind_of(program: &Program, registered: bool, tool: &str) -> Option<Kind> {
    if program.tools.iter().any(|t| t.decl.name == tool) {
        Some(Kind::Own)
    } else if program
        .connections
        .iter()
        .any(|c| c.name == tool && c.is_mcp())
    {
        Some(Kind::Mcp)
    } else if program.hosts.iter().any(|h| h.name == tool) {
        Some(Kind::Host)
    } else if registered {
        Some(Kind::Registered)
    } else {
        None
    }
}

/// `would start `command args`` for host agent `name`, when it declares a command.
fn host_launch(program: &Program, name: &str) -> Option<String> {
    let decl = program.hosts.iter().find(|h| h.name == name)?;
    let command = decl.command.as_deref().filter(|c| !c.trim().is_empty())?;
    Some(format!(
        "would start `{}`",
        command_line(std::iter::once(command).chain(decl.args.iter().map(String::as_str)))
    ))
}

/// A command line as a person must read it before allowing it: each word quoted as a POSIX
/// shell would need it (so `-c "a b"` is not shown as three words), and control characters
/// (a carriage return or an escape sequence that could hide the rest) shown as `\u{…}`.
pub(crate) fn command_line<'a>(words: impl Iterator<Item = &'a str>) -> String {
    words
        .map(|w| shlex::try_quote(w).map_or_else(|_| w.to_string(), |q| q.into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .map(|c| {
            if c.is_control() {
                format!("\\u{{{:x}}}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn denied(message: String) -> HostError {
    HostError::not_enabled(message)
}

impl Tools {
    /// Whether host agent `program.hosts[host]` may run.
    fn check_host(&self, program: &Program, host: u32) -> Result<(), HostError> {
        match program.hosts.get(host as usize) {
            Some(decl) => self.check(program, &decl.name, "execute"),
            None => Err(HostError::failed(format!("host #{host} does not exist"))),
        }
    }
}

/// A host agent's streaming session, as the interpreter sees it.
struct Session(Arc<hosts::ListenSession>);

impl HostSession for Session {
    fn next_line(&self) -> BoxFuture<Result<Option<String>, HostError>> {
        let session = self.0.clone();
        Box::pin(async move { session.next_line().await })
    }

    fn send_line(&self, line: String) -> BoxFuture<Result<(), HostError>> {
        let session = self.0.clone();
        Box::pin(async move { session.send_line(line).await })
    }

    fn finish(&self, clean: bool) {
        self.0.finish(clean);
    }
}

impl ToolHost for Tools {
    fn check(&self, program: &Program, tool: &str, method: &str) -> Result<(), HostError> {
        let kind = kind_of(program, self.registered.contains_key(tool), tool)
            .ok_or_else(|| HostError::failed(format!("unknown tool '{tool}'")))?;
        let what = match kind {
            Kind::Own => "tool",
            Kind::Mcp => "MCP server",
            Kind::Host => "host agent",
            Kind::Registered => "host tool",
        };
        match (self.permission(tool), kind) {
            (Some(Permission::Disabled), _) => Err(denied(format!(
                "{what} '{tool}' is disabled by the host (tool_permissions / --disable-tool {tool})"
            ))),
            (Some(Permission::Methods(list)), _)
                if !method.is_empty() && !list.iter().any(|m| m == method) =>
            {
                Err(denied(format!(
                    "{what} '{tool}' may not call '{method}': only {} {} allowed \
                     (tool_permissions / --allow-tool {tool}.{method})",
                    list.join(", "),
                    if list.len() == 1 { "is" } else { "are" }
                )))
            }
            (Some(_), _) | (None, Kind::Own) => Ok(()),
            (None, _) => {
                // The command line comes from the program: show what enabling it starts.
                let launch = match kind {
                    Kind::Mcp => mcp::launch(program, tool),
                    Kind::Host => host_launch(program, tool),
                    _ => None,
                };
                let launch = launch
                    .map(|l| format!(" (enabling it {l})"))
                    .unwrap_or_default();
                Err(denied(format!(
                    "{what} '{tool}' reaches outside the program and is not enabled; allow it \
                     with --allow-tool {tool} (or tool_permissions: {tool} = AllMethods){launch}"
                )))
            }
        }
    }

    fn is_registered(&self, name: &str) -> bool {
        self.registered.contains_key(name)
    }

    fn is_switched_off(&self, name: &str) -> bool {
        matches!(self.permission(name), Some(Permission::Disabled))
    }

    fn specs(
        &self,
        program: &Arc<Program>,
        tool: &str,
    ) -> BoxFuture<Result<Vec<ToolSpec>, HostError>> {
        // The VM checks before it asks, but this layer does not rely on its caller.
        if let Err(e) = self.check(program, tool, "") {
            return Box::pin(async move { Err(e) });
        }
        if let Some(methods) = self.registered.get(tool) {
            let allowed = match self.permission(tool) {
                Some(Permission::Methods(list)) => Some(list),
                _ => None,
            };
            let specs = methods
                .iter()
                .filter(|(name, _)| allowed.is_none_or(|list| list.contains(name)))
                .map(|(name, m)| ToolSpec {
                    name: format!("{tool}::{name}"),
                    description: m.description.clone(),
                    parameters: m.parameters.clone(),
                })
                .collect();
            return Box::pin(async move { Ok(specs) });
        }
        let mcp = self.mcp.clone();
        let program = program.clone();
        let allowed = match self.permission(tool) {
            Some(Permission::Methods(list)) => Some(list.clone()),
            _ => None,
        };
        let tool = tool.to_string();
        Box::pin(async move {
            let mut specs = mcp.specs(&program, &tool).await?;
            // A model is offered only the methods it may call.
            if let Some(allowed) = allowed {
                specs.retain(|s| {
                    let method = s.name.rsplit("::").next().unwrap_or_default();
                    allowed.iter().any(|m| m == method)
                });
            }
            Ok(specs)
        })
    }

    fn call(
        &self,
        program: &Arc<Program>,
        tool: &str,
        method: &str,
        args: serde_json::Value,
    ) -> BoxFuture<Result<Value, HostError>> {
        if let Err(e) = self.check(program, tool, method) {
            return Box::pin(async move { Err(e) });
        }
        if let Some(methods) = self.registered.get(tool) {
            let Some((_, m)) = methods.iter().find(|(name, _)| name == method) else {
                let message = format!("host tool '{tool}' has no method '{method}'");
                return Box::pin(async move { Err(HostError::failed(message)) });
            };
            let fut = (m.handler)(args);
            return Box::pin(async move { Ok(tool_value(fut.await)) });
        }
        let mcp = self.mcp.clone();
        let program = program.clone();
        let (tool, method) = (tool.to_string(), method.to_string());
        Box::pin(async move { Ok(tool_value(mcp.call(&program, &tool, &method, args).await?)) })
    }

    fn call_for_model(
        &self,
        program: &Arc<Program>,
        tool: &str,
        method: &str,
        args: serde_json::Value,
    ) -> BoxFuture<Result<ToolOutput, HostError>> {
        // Host-registered tools return JSON, never images.
        if self.registered.contains_key(tool) {
            let call = self.call(program, tool, method, args);
            return Box::pin(async move {
                Ok(ToolOutput {
                    value: call.await?,
                    images: Vec::new(),
                })
            });
        }
        if let Err(e) = self.check(program, tool, method) {
            return Box::pin(async move { Err(e) });
        }
        let mcp = self.mcp.clone();
        let program = program.clone();
        let (tool, method) = (tool.to_string(), method.to_string());
        Box::pin(async move {
            let (result, images) = mcp.call_for_model(&program, &tool, &method, args).await?;
            Ok(ToolOutput {
                value: tool_value(result),
                images,
            })
        })
    }

    fn host_exchange(
        &self,
        program: &Arc<Program>,
        host: u32,
        input: String,
    ) -> BoxFuture<Result<String, HostError>> {
        if let Err(e) = self.check_host(program, host) {
            return Box::pin(async move { Err(e) });
        }
        let hosts = self.hosts.clone();
        let program = program.clone();
        Box::pin(async move { hosts.exchange(&program, host, input).await })
    }

    fn host_listen(
        &self,
        program: &Arc<Program>,
        host: u32,
        input: String,
    ) -> BoxFuture<Result<Arc<dyn HostSession>, HostError>> {
        if let Err(e) = self.check_host(program, host) {
            return Box::pin(async move { Err(e) });
        }
        let hosts = self.hosts.clone();
        let program = program.clone();
        Box::pin(async move {
            let session = hosts.listen(&program, host, input).await?;
            Ok(Arc::new(Session(Arc::new(session))) as Arc<dyn HostSession>)
        })
    }

    fn fs(&self, request: FsRequest) -> BoxFuture<Result<FsReply, OutsideError>> {
        if matches!(self.permission("std::fs"), Some(Permission::Disabled)) {
            return Box::pin(async {
                Err(OutsideError::refused(
                    "std::fs is disabled by the host (tool_permissions / --disable-tool std::fs)",
                ))
            });
        }
        let fs = self.fs.clone();
        Box::pin(async move { fs.run(request).await })
    }

    fn http(&self, request: HttpRequest) -> BoxFuture<Result<HttpReply, OutsideError>> {
        if matches!(self.permission("std::http"), Some(Permission::Disabled)) {
            return Box::pin(async {
                Err(OutsideError::refused(
                    "std::http is disabled by the host (tool_permissions / --disable-tool std::http)",
                ))
            });
        }
        let http = self.http.clone();
        Box::pin(async move { http.request(request).await })
    }
}

/// A tool's result as the program sees it: `Ok(value)`, or `Err(ToolError { message })` as
/// `ToolError::new(msg)` builds it.
fn tool_value(result: Result<serde_json::Value, ToolFailure>) -> Value {
    match result {
        Ok(json) => Value::ok(Value::from_json(&json)),
        Err(failure) => Value::err(Value::record(
            "ToolError",
            vec![("message", Value::str(failure.message))],
        )),
    }
}

/// A program whose `main` returns nil, with the top-level IR fields of `fields` (such as
/// `agents` or `connections`), for unit tests.
#[cfg(test)]
fn test_program(fields: serde_json::Value) -> Program {
    let mut ir = serde_json::json!({
        "version": "0.1.0", "module": "m", "source_file": "m.conc",
        "constants": [{"index": 0, "type": "nil", "value": null}],
        "functions": [{"name": "main", "module": "m", "visibility": "private",
            "params": [], "return_type": "nil", "is_async": false, "locals": [],
            "instructions": [{"op": "LOAD_CONST", "arg": 0}, {"op": "RETURN"}]}],
        "metadata": {"compiler_version": "0.1.0", "compiled_at": "",
            "optimization_level": 0, "debug_info": false, "entry_point": "main"}
    });
    for (name, value) in fields.as_object().into_iter().flatten() {
        ir[name] = value.clone();
    }
    concerto_ir::load_str(&ir.to_string()).unwrap()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    #[test]
    fn a_refusal_shows_the_command_line_as_it_would_run() {
        let words = ["sh", "-c", "echo ARGS=[$0]; exit 3", "$OPENAI_API_KEY"];
        assert_eq!(
            super::command_line(words.into_iter()),
            "sh -c 'echo ARGS=[$0]; exit 3' '$OPENAI_API_KEY'"
        );
        // A carriage return and an escape sequence cannot hide what runs.
        let words = ["python3", "evil.py\r\u{1b}[2Kpython3 ./summarise.py --safe"];
        let shown = super::command_line(words.into_iter());
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(shown.contains("evil.py\\u{d}\\u{1b}[2K"), "{shown}");
    }

    use concerto_vm::Value;
    use concerto_vm::host::ToolHost;
    use serde_json::json;

    use super::{Permission, Policy, SandboxError, ToolFailure, Tools, resolve_paths};

    #[tokio::test]
    async fn a_handlers_failure_is_the_callers_tool_error() {
        let mut tools = Tools::new(Policy {
            tools: [("Disk".to_string(), Permission::AllMethods)].into(),
            ..Policy::default()
        })
        .unwrap();
        tools.register("Disk", "write", "", json!({}), |args| async move {
            match args["full"].as_bool() {
                Some(true) => Err(ToolFailure::from("disk full")),
                _ => Ok(json!("written")),
            }
        });
        let program = Arc::new(super::test_program(json!({})));
        let failed = tools
            .call(&program, "Disk", "write", json!({"full": true}))
            .await
            .unwrap();
        let tool_error = Value::record("ToolError", vec![("message", Value::str("disk full"))]);
        assert_eq!(failed, Value::err(tool_error));
        let written = tools
            .call(&program, "Disk", "write", json!({"full": false}))
            .await
            .unwrap();
        assert_eq!(written, Value::ok(Value::str("written")));
    }

    #[test]
    fn tools_whose_allowed_directory_cannot_be_used_are_not_made() {
        let base = tempfile::tempdir().unwrap();
        let missing = base.path().join("missing");
        let policy = Policy {
            fs_roots: vec![base.path().to_path_buf(), missing.clone()],
            ..Policy::default()
        };
        let err = Tools::new(policy).unwrap_err();
        assert!(
            matches!(&err, SandboxError::DirectoryUnusable { path, .. } if *path == missing),
            "{err:?}"
        );
        assert!(Tools::new(Policy::default()).is_ok());
    }

    #[test]
    fn relative_paths_that_exist_next_to_the_program_resolve_there() {
        let base = tempfile::tempdir().unwrap();
        std::fs::write(base.path().join("agent.py"), "").unwrap();
        std::fs::create_dir(base.path().join("bin")).unwrap();
        std::fs::write(base.path().join("bin/run.sh"), "").unwrap();
        let at = |rel: &str| base.path().join(rel).to_string_lossy().into_owned();
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();

        // An argument naming a file there, a program with a slash; flags, absent files and
        // PATH programs stay as written; no working directory means the runtime's own.
        let (program, resolved, cwd) = resolve_paths(
            Some(base.path()),
            "bin/run.sh",
            &args(&["agent.py", "--verbose", "missing.py", "/etc/hosts"]),
            None,
        );
        assert_eq!(program, at("bin/run.sh"));
        assert_eq!(
            resolved,
            vec![
                at("agent.py"),
                "--verbose".into(),
                "missing.py".into(),
                "/etc/hosts".into()
            ]
        );
        assert_eq!(cwd, None);
        let (program, _, cwd) = resolve_paths(Some(base.path()), "python3", &[], Some("bin"));
        assert_eq!(program, "python3");
        assert_eq!(cwd, Some(at("bin")));
        let (_, _, cwd) = resolve_paths(Some(base.path()), "python3", &[], Some("/tmp"));
        assert_eq!(cwd.as_deref(), Some("/tmp"));

        // The project folder above (with Concerto.toml) is tried after the program's own.
        let project = tempfile::tempdir().unwrap();
        std::fs::write(project.path().join("Concerto.toml"), "").unwrap();
        std::fs::create_dir_all(project.path().join("src")).unwrap();
        std::fs::create_dir_all(project.path().join("agents")).unwrap();
        std::fs::write(project.path().join("agents/a.py"), "").unwrap();
        let src = project.path().join("src");
        let (_, resolved, _) =
            resolve_paths(Some(&src), "python3", &args(&["agents/a.py", "x.py"]), None);
        assert_eq!(
            resolved,
            vec![
                project
                    .path()
                    .join("agents/a.py")
                    .to_string_lossy()
                    .into_owned(),
                "x.py".to_string()
            ]
        );

        // Without a program folder nothing changes.
        let (program, resolved, cwd) =
            resolve_paths(None, "bin/run.sh", &args(&["agent.py"]), Some("bin"));
        assert_eq!(
            (program.as_str(), resolved, cwd.as_deref()),
            ("bin/run.sh", args(&["agent.py"]), Some("bin"))
        );
    }
}
